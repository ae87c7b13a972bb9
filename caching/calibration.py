"""Calibration: what an uncached run measured, and TeaCache's rescale polynomial fitted to it.

TeaCache's authors fit `numpy.polyfit(x, y, 4)` where x is the relative L1 change of the
indicator between consecutive steps and y that of the model's output (TeaCache issue #2).
A calibration run records both per call and per CFG branch, plus the relative L1 changes of
the first block's residual that Cache-DiT's DBCache gate would measure, so that a target
speedup can later be turned into a threshold by replaying the methods' own rules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEGREE = 4
FN_LOOKBACK = 6  # Fn residual diffs kept per call: against each of the 6 calls before it (same branch)


@dataclass(frozen=True)
class RecordedCall:
    """One model call of a calibration run.

    Args:
        step / sigma: the sampler step and the call's sigma (a window in percent maps to sigmas).
        branches: CFG branches in the call, numbered in the order the run first saw them.
        indicator / output: per branch, relative L1 change since the branch's previous call
            (None on its first call).
        fn_diffs: per branch, relative L1 change of the first block's residual against the
            residual of 1, 2, ... FN_LOOKBACK calls before (as many as exist).
    """

    step: int
    sigma: float
    branches: tuple[int, ...]
    indicator: tuple[float | None, ...]
    output: tuple[float | None, ...]
    fn_diffs: tuple[tuple[float, ...], ...] = ()

    def to_json(self) -> dict:
        return {
            "step": self.step,
            "sigma": self.sigma,
            "branches": list(self.branches),
            "indicator": list(self.indicator),
            "output": list(self.output),
            "fn_diffs": [list(d) for d in self.fn_diffs],
        }

    @classmethod
    def from_json(cls, data: dict) -> RecordedCall:
        return cls(
            step=int(data["step"]),
            sigma=float(data["sigma"]),
            branches=tuple(int(b) for b in data["branches"]),
            indicator=tuple(_optional_float(v) for v in data["indicator"]),
            output=tuple(_optional_float(v) for v in data["output"]),
            fn_diffs=tuple(tuple(float(v) for v in d) for d in data.get("fn_diffs", [])),
        )


@dataclass(frozen=True)
class RecordedRun:
    """One uncached sampling run, call by call."""

    total_steps: int
    calls: tuple[RecordedCall, ...]

    def to_json(self) -> dict:
        return {"total_steps": self.total_steps, "calls": [c.to_json() for c in self.calls]}

    @classmethod
    def from_json(cls, data: dict) -> RecordedRun:
        return cls(int(data["total_steps"]), tuple(RecordedCall.from_json(c) for c in data["calls"]))


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class RescaleFit:
    """The fitted polynomial (highest power first), its R² on the samples, and how many there were."""

    coefficients: tuple[float, ...]
    r2: float
    samples: int

    def describe(self) -> str:
        coefficients = ", ".join(f"{c:.6g}" for c in self.coefficients)
        return f"coefficients [{coefficients}], R² {self.r2:.4f} on {self.samples} samples"


def samples(runs: Sequence[RecordedRun]) -> tuple[np.ndarray, np.ndarray]:
    """(indicator change, output change) pairs of every branch of every call where both were measured."""
    pairs = [
        (x, y)
        for run in runs
        for call in run.calls
        for x, y in zip(call.indicator, call.output, strict=True)
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
    ]
    data = np.array(pairs, dtype=np.float64).reshape(-1, 2)
    return data[:, 0], data[:, 1]


def fit_rescale(x: np.ndarray, y: np.ndarray, degree: int = DEGREE) -> RescaleFit:
    """Least-squares polynomial y ≈ p(x), as TeaCache's authors fit theirs; ValueError with too few samples."""
    if len(x) <= degree:
        raise ValueError(
            f"a degree-{degree} fit needs more than {degree} samples, got {len(x)}: "
            "run more steps or more calibration runs"
        )
    coefficients = np.polyfit(x, y, degree)
    predicted = np.polyval(coefficients, x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else 1.0
    return RescaleFit(tuple(float(c) for c in coefficients), r2, len(x))


def fit_runs(runs: Sequence[RecordedRun], degree: int = DEGREE) -> RescaleFit:
    return fit_rescale(*samples(runs), degree=degree)
