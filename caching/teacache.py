"""TeaCache: skip a whole transformer pass while the first block's modulated input barely moves.

The rule (Liu et al., "Timestep Embedding Tells", 2024): per CFG branch, the relative L1
change of the indicator between consecutive calls is rescaled by a fitted polynomial and
accumulated; while the sum stays below the threshold the pass is skipped and the cached
residual of the block stack (output - input) is added to the input instead.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch

from .offload import from_cache, to_cache
from .records import CallRecord, RunSummary


@dataclass(frozen=True)
class TeaCacheConfig:
    """What one Apply TeaCache node asked for.

    Args:
        rel_l1_thresh: skip while the accumulated rescaled change stays below this; 0 never skips.
        coefficients: rescale polynomial, highest power first (numpy.poly1d order).
        start_percent / end_percent: part of the denoising where skipping is allowed.
        warmup_steps: leading steps that always compute (Wan's "ret" presets use 5).
        force_last_step: whether the last step always computes.
        offload_device: where cached residuals live ("cpu" keeps them off the GPU); None = main device.
    """

    rel_l1_thresh: float
    coefficients: tuple[float, ...]
    start_percent: float = 0.0
    end_percent: float = 1.0
    warmup_steps: int = 1
    force_last_step: bool = True
    offload_device: str | None = None

    def __post_init__(self) -> None:
        if not self.rel_l1_thresh >= 0.0:  # also rejects NaN
            raise ValueError(f"rel_l1_thresh must be >= 0 (0 disables skipping), got {self.rel_l1_thresh}")
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ValueError(
                "start_percent and end_percent must satisfy 0 <= start_percent <= end_percent <= 1, "
                f"got start_percent={self.start_percent}, end_percent={self.end_percent}"
            )
        if not self.coefficients or not all(isinstance(c, float) and math.isfinite(c) for c in self.coefficients):
            raise ValueError(f"coefficients must be one or more finite floats, got {self.coefficients!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def tag(self) -> str:
        """Short tag for logs, e.g. TeaCache_R0.40_P0.00-1.00."""
        return f"TeaCache_R{self.rel_l1_thresh:.2f}_P{self.start_percent:.2f}-{self.end_percent:.2f}"


def rescale(coefficients: Sequence[float], x: float) -> float:
    """Evaluate the polynomial (highest power first) at x, as numpy.poly1d would."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


@dataclass
class BranchState:
    """What one CFG branch (one cond) carries from call to call."""

    previous: torch.Tensor | None = None
    accumulated: float = 0.0
    residual: torch.Tensor | None = None


@dataclass
class TeaCacheRun:
    """Decisions and cached residuals of one sampling run."""

    config: TeaCacheConfig
    total_steps: int
    branches: dict[Hashable, BranchState] = field(default_factory=dict)
    records: list[CallRecord] = field(default_factory=list)

    def decide(self, keys: Sequence[Hashable], indicators: Sequence[torch.Tensor], step: int, in_window: bool) -> bool:
        """Measure each branch's indicator change, then apply the rule (`decide_changes`)."""
        states = [self.branches.setdefault(k, BranchState()) for k in keys]
        comparable = [
            s.previous is not None and s.previous.shape == ind.shape for s, ind in zip(states, indicators, strict=True)
        ]
        changes: list[float | None] = [None] * len(states)
        if any(comparable):
            measured = [
                relative_l1(s.previous, ind) for s, ind, ok in zip(states, indicators, comparable, strict=True) if ok
            ]
            values = iter(torch.stack(measured).tolist())  # one host sync for all branches
            changes = [next(values) if ok else None for ok in comparable]
        for state, indicator in zip(states, indicators, strict=True):
            state.previous = indicator
        return self.decide_changes(keys, changes, step, in_window)

    def decide_changes(
        self, keys: Sequence[Hashable], changes: Sequence[float | None], step: int, in_window: bool
    ) -> bool:
        """The rule on measured changes (None: not measurable); True when this call must compute.

        A call that carries several branches (ComfyUI batches cond and uncond) computes when
        any of them must; all of them then restart their accumulation from a fresh residual.
        Calibration replays recorded changes through this same method to predict a speedup.
        """
        cfg = self.config
        states = [self.branches.setdefault(k, BranchState()) for k in keys]
        forced = step < cfg.warmup_steps or (cfg.force_last_step and step >= self.total_steps - 1) or not in_window
        compute = forced or cfg.rel_l1_thresh <= 0.0
        accumulated: list[float | None] = []
        for state, change in zip(states, changes, strict=True):
            if change is None or not math.isfinite(change) or state.residual is None:
                compute = True
                accumulated.append(None)
            else:
                state.accumulated += rescale(cfg.coefficients, change)
                accumulated.append(state.accumulated)
                if state.accumulated >= cfg.rel_l1_thresh:
                    compute = True
        if compute:
            for state in states:
                state.accumulated = 0.0
        self.records.append(CallRecord(step, tuple(keys), tuple(changes), compute, tuple(accumulated)))
        return compute

    def store(self, keys: Sequence[Hashable], residual: torch.Tensor | None) -> None:
        """Keep each branch's slice of the stack residual; None forgets it (next call computes)."""
        chunks = residual.chunk(len(keys)) if residual is not None else [None] * len(keys)
        for key, chunk in zip(keys, chunks, strict=True):
            if chunk is not None:
                chunk = to_cache(chunk, self.config.offload_device)
            self.branches.setdefault(key, BranchState()).residual = chunk

    def apply(self, keys: Sequence[Hashable], hidden: torch.Tensor) -> torch.Tensor:
        """Input of the block stack plus the cached residual of each branch."""
        residual = torch.cat([self.branches[k].residual for k in keys])
        return hidden + from_cache(residual, hidden).to(hidden.dtype)

    def summary(self) -> RunSummary:
        return RunSummary(self.total_steps, tuple(self.records))


def relative_l1(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """mean|current - previous| / mean|previous|, in float32, as a 0-dim tensor (no host sync)."""
    previous = previous.float()
    return (current.float() - previous).abs().mean() / previous.abs().mean()
