"""Where a model call sits in the sampler's schedule."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


class StepSchedule:
    """Maps a call's sigma to its sampler step, and tells whether caching may act there.

    Multi-evaluation samplers (Heun, DPM++ 2S) also call the model at sigmas between two
    schedule points: such a call belongs to the step whose interval contains its sigma.
    """

    def __init__(self, sigmas: Sequence[float], start_sigma: float = float("inf"), end_sigma: float = 0.0):
        self.sigmas = [float(s) for s in sigmas]
        if len(self.sigmas) < 2:
            raise ValueError("a sampling schedule needs at least two sigmas")
        self._ascending = [-s for s in self.sigmas]
        self.start_sigma = start_sigma
        self.end_sigma = end_sigma

    @property
    def total_steps(self) -> int:
        return len(self.sigmas) - 1

    def step_index(self, sigma: float) -> int:
        """Index i of the step with sigmas[i] >= sigma > sigmas[i + 1]."""
        # A hair below sigma, so that float noise on a schedule point cannot fall a step back.
        index = bisect_right(self._ascending, -sigma * (1.0 - 1e-6)) - 1
        return min(max(index, 0), self.total_steps - 1)

    def in_window(self, sigma: float) -> bool:
        """True inside [start_percent, end_percent], given as sigmas (ComfyUI's convention)."""
        return self.end_sigma < sigma <= self.start_sigma
