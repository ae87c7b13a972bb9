"""Choose a threshold for a target speedup by replaying calibration runs through the methods' own rules.

Speedup here is transformer evaluations: calls of the uncached run / calls that compute. The
indicator changes of a run barely depend on which steps were skipped (Wan's time embedding not
at all), so replaying the recorded changes predicts the decisions of a cached run; how close a
real run lands is measured in docs/calibration.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import torch

from .calibration import RecordedRun
from .dbcache import DBCacheConfig, DBCacheRun
from .teacache import TeaCacheConfig, TeaCacheRun

CALIBRATED_FN_BLOCKS = 1  # calibration measures the residual of the first block only
TEACACHE_MAX_THRESH = 10.0  # Apply TeaCache's widget range
DBCACHE_MAX_THRESH = 0.999  # 1 and above means "cache without comparing" in DBCache


@dataclass(frozen=True)
class SigmaWindow:
    """Where caching may act, as sigmas (ComfyUI's start/end percent of a model)."""

    start_sigma: float = math.inf
    end_sigma: float = 0.0

    def contains(self, sigma: float) -> bool:
        return self.end_sigma < sigma <= self.start_sigma


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    predicted: float  # speedup the threshold gives on the calibration runs
    target: float
    reachable: bool  # False: the target exceeds what any threshold gives; the maximum is used

    def describe(self) -> str:
        text = f"threshold {self.threshold:.4g} predicts {self.predicted:.2f}x fewer transformer evaluations"
        if not self.reachable:
            text += f" (the most any threshold reaches on the calibration runs; target {self.target:.2f}x)"
        return text


def speedup(computed: int, total: int) -> float:
    return total / computed if computed else math.inf


def teacache_counts(runs: Sequence[RecordedRun], config: TeaCacheConfig, window: SigmaWindow) -> tuple[int, int]:
    """(computed calls, calls) that TeaCache's rule gives on the recorded indicator changes."""
    computed = total = 0
    for run in runs:
        tea = TeaCacheRun(config, run.total_steps)
        for call in run.calls:
            if tea.decide_changes(call.branches, call.indicator, call.step, window.contains(call.sigma)):
                tea.store(call.branches, torch.zeros(len(call.branches)))  # a residual now exists
                computed += 1
            total += 1
    return computed, total


def dbcache_counts(runs: Sequence[RecordedRun], config: DBCacheConfig) -> tuple[int, int]:
    """(computed calls, calls) that DBCache's gates give on the recorded first-block residual diffs.

    Each call's probe is stood in for by its index in the branch; the gate reads the recorded
    diff between two indices. Beyond calibration.FN_LOOKBACK calls apart nothing was recorded: that call
    computes, which caps a replayed streak of cached calls at FN_LOOKBACK.
    """
    if config.Fn_compute_blocks != CALIBRATED_FN_BLOCKS:
        raise ValueError(
            f"calibration measured Fn_compute_blocks={CALIBRATED_FN_BLOCKS}, not {config.Fn_compute_blocks}"
        )
    computed = total = 0
    for run in runs:
        recorded: dict[Hashable, list[tuple[float, ...]]] = {}  # branch -> recorded diffs of each of its calls
        replay = DBCacheRun(config, run.total_steps, diff_for=partial(_branch_diff, recorded))
        for call in run.calls:
            if len(call.fn_diffs) != len(call.branches):
                raise ValueError("these calibration runs have no first-block residual diffs (Cache-DiT)")
            probes = []
            for branch, diffs in zip(call.branches, call.fn_diffs, strict=True):
                recorded.setdefault(branch, []).append(diffs)
                probes.append(torch.tensor(len(recorded[branch]) - 1))
            if replay.decide(call.branches, probes, call.step):
                stand_in = (torch.zeros(len(call.branches)), None)  # what the middle left: never read here
                replay.store(call.branches, call.step, probes, stand_in, stand_in)
                computed += 1
            total += 1
    return computed, total


def _branch_diff(recorded: dict[Hashable, list[tuple[float, ...]]], branch: Hashable) -> Callable[..., float]:
    return partial(_recorded_diff, recorded[branch])


def _recorded_diff(recorded: list[tuple[float, ...]], previous: torch.Tensor, current: torch.Tensor) -> float:
    """The recorded diff between the calls whose indices stand in for the probes (inf: not recorded)."""
    back = int(current) - int(previous)
    diffs = recorded[int(current)]
    return diffs[back - 1] if 0 < back <= len(diffs) else math.inf


def choose_threshold(
    speedup_at: Callable[[float], float], target: float, high: float, iterations: int = 40
) -> ThresholdChoice:
    """The smallest threshold in [0, high] whose speedup reaches `target` (bisection; speedup grows with it)."""
    if not target >= 1.0:
        raise ValueError(f"target_speedup must be >= 1 (0 turns it off), got {target}")
    best = speedup_at(high)
    goal = min(target, best)
    low, high_ok = 0.0, high
    if speedup_at(0.0) >= goal:
        high_ok = 0.0
    else:
        for _ in range(iterations):
            middle = (low + high_ok) / 2
            if speedup_at(middle) >= goal:
                high_ok = middle
            else:
                low = middle
    return ThresholdChoice(high_ok, speedup_at(high_ok), target, best >= target)


def teacache_threshold(
    runs: Sequence[RecordedRun], config: TeaCacheConfig, target: float, window: SigmaWindow = SigmaWindow()
) -> ThresholdChoice:
    """rel_l1_thresh for `target` with these coefficients and settings (config's own threshold is ignored)."""
    return choose_threshold(
        lambda t: speedup(*teacache_counts(runs, replace(config, rel_l1_thresh=t), window)), target, TEACACHE_MAX_THRESH
    )


def dbcache_threshold(runs: Sequence[RecordedRun], config: DBCacheConfig, target: float) -> ThresholdChoice:
    """residual_diff_threshold for `target` with the other gates of `config`."""
    return choose_threshold(
        lambda t: speedup(*dbcache_counts(runs, replace(config, residual_diff_threshold=t))), target, DBCACHE_MAX_THRESH
    )
