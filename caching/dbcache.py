"""DBCache: skip the middle transformer blocks while the first blocks' residual barely moves.

The rule is cache-dit's Dual Block Cache (vipshop/cache-dit), decided here per CFG branch and
per sampler step so that ComfyUI's glue can run the blocks itself: the first Fn blocks always
run and their residual is the probe; when it stays close to the one of the last computed step,
the middle blocks are replaced by their cached residual (or a calibrator's forecast of it), and the
last Bn blocks run on top. A steps computation mask (SCM) can force or allow caching by step.

Every gate, its order and the recorded statistics follow cache-dit 1.5.x so that a run decides
exactly as cache-dit would on the same tensors; tests/unit/test_dbcache_engine.py checks this against
cache-dit's own code. Deliberate differences are named where they are made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .calibrators import (
    CACHE_TYPES,
    CALIBRATORS,
    DMD_SVD_PRECISIONS,
    MAX_DMD_HISTORY,
    MAX_TAYLORSEER_ORDER,
    cache_dit_config,
    import_cache_dit,
    new_calibrator,
)
from .offload import from_cache, to_cache
from .records import CallRecord, RunSummary

SCM_PRESETS = ("none", "slow", "medium", "fast", "ultra", "custom")
SCM_POLICIES = ("dynamic", "static")
SCM_MIN_STEPS = 8

Streams = tuple[torch.Tensor, torch.Tensor | None]


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    in_range = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if in_range and maximum is not None:
        in_range = value <= maximum
    if not in_range:
        allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class DBCacheConfig:
    """What one DBCache node asked for; defaults are SGLang's cache-dit integration.

    Args:
        Fn_compute_blocks: first blocks that always run; their residual is the similarity probe.
        Bn_compute_blocks: last blocks that always run, on top of the approximated state.
        residual_diff_threshold: cache while the probe's relative L1 change is below this;
            0 never caches dynamically, >= 1 always caches once a probe is stored.
        max_warmup_steps / warmup_interval: steps in range(0, max_warmup_steps, warmup_interval)
            always compute.
        max_cached_steps: cap on cached steps per run (-1: none).
        max_continuous_cached_steps: cap on cached steps in a row (-1: none).
        max_accumulated_residual_diff_threshold: stop caching once the summed diffs reach it.
        calibrator: forecast the middle blocks' residual (or output hidden states, by
            calibrator_cache_type) with cache-dit's TaylorSeer, FoCa or DMD instead of reusing it;
            taylorseer_order and dmd_* are their options, under cache-dit's names.
        scm_preset / scm_compute_bins / scm_cache_bins / scm_policy: steps computation mask;
            "dynamic" lets DBCache decide on mask cache steps, "static" always caches there.
        offload_device: where cached tensors live ("cpu" keeps them off the GPU); None = main device.
    """

    Fn_compute_blocks: int = 1
    Bn_compute_blocks: int = 0
    residual_diff_threshold: float = 0.24
    max_warmup_steps: int = 4
    warmup_interval: int = 1
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = 3
    max_accumulated_residual_diff_threshold: float | None = None
    calibrator: str = "none"
    calibrator_cache_type: str = "residual"
    taylorseer_order: int = 1
    dmd_history: int = 6
    dmd_rank: int = 0
    dmd_svd_precision: str = "medium"
    scm_preset: str = "none"
    scm_compute_bins: tuple[int, ...] = ()
    scm_cache_bins: tuple[int, ...] = ()
    scm_policy: str = "dynamic"
    offload_device: str | None = None

    def __post_init__(self) -> None:
        _check_int("Fn_compute_blocks", self.Fn_compute_blocks, 1)
        _check_int("Bn_compute_blocks", self.Bn_compute_blocks, 0)
        if not (_is_real(self.residual_diff_threshold) and self.residual_diff_threshold >= 0):
            raise ValueError(
                "residual_diff_threshold must be a finite number >= 0 (0 never caches), "
                f"got {self.residual_diff_threshold!r}"
            )
        _check_int("max_warmup_steps", self.max_warmup_steps, 0)
        _check_int("warmup_interval", self.warmup_interval, 1)
        _check_int("max_cached_steps", self.max_cached_steps, -1)
        _check_int("max_continuous_cached_steps", self.max_continuous_cached_steps, -1)
        limit = self.max_accumulated_residual_diff_threshold
        if limit is not None and not (_is_real(limit) and limit > 0):
            raise ValueError(
                f"max_accumulated_residual_diff_threshold must be None (no limit) or a finite number > 0, got {limit!r}"
            )
        _check_choice("calibrator", self.calibrator, CALIBRATORS)
        _check_choice("calibrator_cache_type", self.calibrator_cache_type, CACHE_TYPES)
        _check_int("taylorseer_order", self.taylorseer_order, 1, MAX_TAYLORSEER_ORDER)
        _check_int("dmd_history", self.dmd_history, 2, MAX_DMD_HISTORY)
        _check_int("dmd_rank", self.dmd_rank, 0, MAX_DMD_HISTORY)
        _check_choice("dmd_svd_precision", self.dmd_svd_precision, DMD_SVD_PRECISIONS)
        _check_choice("scm_preset", self.scm_preset, SCM_PRESETS)
        _check_choice("scm_policy", self.scm_policy, SCM_POLICIES)
        for name in ("scm_compute_bins", "scm_cache_bins"):
            bins = getattr(self, name)
            if self.scm_preset != "custom":
                if bins:
                    raise ValueError(f"{name} is only used with scm_preset='custom'; leave it empty, got {bins!r}")
            elif not (
                isinstance(bins, tuple)
                and bins
                and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bins)
            ):
                raise ValueError(
                    f"{name} must be a non-empty tuple of integers >= 1 when scm_preset='custom', got {bins!r}"
                )

    @property
    def caches_residual(self) -> bool:
        """Whether the middle blocks' residual is cached (else their output hidden states)."""
        return self.calibrator == "none" or self.calibrator_cache_type == "residual"

    def calibrator_config(self) -> Any:
        """cache-dit's config of the calibrator (None without one): what each stream's calibrator is built from."""
        if self.calibrator == "none":
            return None
        return cache_dit_config(
            self.calibrator, self.calibrator_cache_type, self.taylorseer_order,
            self.dmd_history, self.dmd_rank, self.dmd_svd_precision,
        )

    def tag(self) -> str:
        """Short tag for logs in cache-dit's strify style, e.g. DBCache_F1B0_W4I1M0MC3_R0.24."""
        text = (
            f"DBCache_F{self.Fn_compute_blocks}B{self.Bn_compute_blocks}"
            f"_W{self.max_warmup_steps}I{self.warmup_interval}"
            f"M{max(0, self.max_cached_steps)}MC{max(0, self.max_continuous_cached_steps)}"
            f"_R{self.residual_diff_threshold}"
        )
        if self.scm_preset != "none":
            text += f"_SCM{self.scm_preset}_{self.scm_policy}"
        if self.calibrator != "none":
            text += f"_{self.calibrator_config().strify()}"  # cache-dit's own: T1O2, FoCa, DMDH6
        return text

    def steps_mask(self, total_steps: int) -> list[int] | None:
        """The SCM mask (1 = compute, 0 = may cache) for a run of total_steps, or None for no mask.

        The mask is cache_dit.steps_mask's, unchanged: presets are scaled above 28 steps, truncated
        for 16-27 and have their own tables for 8-15, and their last step always computes; custom
        bins are laid out as given (cache-dit does not force their last step).

        Below 8 steps SCM is off (None), as SGLang's integration documents. cache_dit.steps_mask
        itself has fixed preset masks only for 4 and 6 steps and fails for 1-3, 5 and 7; turning
        SCM off keeps a node working whatever the sampler's step count.

        Raises:
            ValueError: custom bins cover fewer than total_steps steps.
            CacheDitNotInstalledError: a mask is needed and cache-dit is not installed.
        """
        _check_int("total_steps", total_steps, 1)
        if self.scm_preset == "none" or total_steps < SCM_MIN_STEPS:
            return None
        cache_dit = import_cache_dit("DBCache's steps computation mask (scm_preset)", "set scm_preset to 'none'")
        steps_mask = cache_dit.steps_mask
        if self.scm_preset != "custom":
            return list(steps_mask(total_steps=total_steps, mask_policy=self.scm_preset))
        covered = sum(self.scm_compute_bins) + sum(self.scm_cache_bins)
        if covered < total_steps:
            raise ValueError(
                f"scm_compute_bins and scm_cache_bins cover {covered} steps but the run has "
                f"{total_steps}: their sum must be >= the number of steps"
            )
        return list(
            steps_mask(
                compute_bins=list(self.scm_compute_bins),
                cache_bins=list(self.scm_cache_bins),
                total_steps=total_steps,
            )
        )


def residual_diff_tensor(previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Relative L1 mean|previous - current| / mean|previous|, in the tensors' own dtype as cache-dit (0-dim)."""
    return (previous - current).abs().mean() / previous.abs().mean()


def residual_diff(previous: torch.Tensor, current: torch.Tensor) -> float:
    """`residual_diff_tensor` as a number: what DBCache's gate compares with its threshold."""
    return residual_diff_tensor(previous, current).item()


class DBCacheBranch:
    """DBCache state of one CFG branch for one sampling run.

    Steps are the sampler's step indices, given by the caller, so that a sampler that evaluates
    the model twice in a step does not advance the step twice. Per call:
    can_cache(); then either mark_cached() and approximate(), or run the middle blocks and store().
    """

    def __init__(
        self,
        config: DBCacheConfig,
        total_steps: int,
        diff: Callable[[torch.Tensor, torch.Tensor], float] = residual_diff,
    ):
        """`diff` measures the probe's change; calibration passes recorded diffs to replay a run."""
        _check_int("total_steps", total_steps, 1)
        self.config = config
        self.diff = diff
        self.total_steps = total_steps
        self.mask = config.steps_mask(total_steps)
        self.warmup_steps = frozenset(range(0, self._warmup_limit(), config.warmup_interval))
        self.cached_steps: list[int] = []
        self.residual_diffs: dict[int, float] = {}
        self.accumulated_residual_diff = 0.0
        self._step = -1
        self._fn_residual: torch.Tensor | None = None
        self._stored: list[torch.Tensor | None] = [None, None]  # image stream, encoder stream
        self._calibrator_config = config.calibrator_config()
        self._calibrators: list[Any] = [None, None]  # one cache-dit calibrator per stream, from its first store

    def _warmup_limit(self) -> int:
        # cache-dit truncates the warmup to the mask's leading run of compute steps.
        if self.mask is None:
            return self.config.max_warmup_steps
        leading = next((i for i, m in enumerate(self.mask) if m != 1), len(self.mask))
        return min(self.config.max_warmup_steps, leading)

    def _enter(self, step: int) -> None:
        """A transformer call of this branch begins: its calibrators count it, as cache-dit counts calls."""
        _check_int("step", step, 0)
        if step < self._step:
            raise ValueError(f"step must not go back within a run: got {step} after {self._step}")
        self._step = step
        for calibrator in self._calibrators:
            if calibrator is not None:
                calibrator.mark_step_begin()

    def _record(self, step: int, diff: float) -> None:
        # The first diff of a step is kept; only positive ones add up (-1 / -2 mark special cases).
        if step not in self.residual_diffs:
            self.residual_diffs[step] = diff
            if diff > 0.0:
                self.accumulated_residual_diff += diff

    def _cached_streak(self, step: int) -> int:
        """Cached steps in a row just before this step (cache-dit's continuous counter)."""
        streak, expected = 0, step - 1
        for cached in reversed(self.cached_steps):
            if cached == step:
                continue
            if cached != expected:
                break
            streak, expected = streak + 1, expected - 1
        return streak

    def can_cache(self, step: int, fn_residual: torch.Tensor) -> bool:
        """Whether this call may skip the middle blocks, by cache-dit's gates in cache-dit's order."""
        self._enter(step)
        cfg = self.config
        if step in self.warmup_steps:
            return False
        if self.mask is not None:
            if step < len(self.mask) and self.mask[step] == 1:
                return False
            if cfg.scm_policy == "static":
                return True
        # The caps count earlier steps only: a second call in a cached step is not held against it.
        earlier = len(self.cached_steps) - (1 if self.cached_steps and self.cached_steps[-1] == step else 0)
        if 0 <= cfg.max_cached_steps <= earlier:
            return False
        if 0 <= cfg.max_continuous_cached_steps <= self._cached_streak(step):
            return False
        limit = cfg.max_accumulated_residual_diff_threshold
        if limit is not None and self.accumulated_residual_diff >= limit:
            return False
        threshold = cfg.residual_diff_threshold
        if threshold <= 0.0 or self._fn_residual is None:
            return False
        # Deliberate difference: cache-dit answers a threshold >= 1 before comparing shapes and
        # would then fail adding a cached residual of the wrong shape; a shape change computes here.
        if self._fn_residual.shape != fn_residual.shape:
            self._record(step, -2.0)
            return False
        if threshold >= 1.0:
            self._record(step, -1.0)
            return True
        diff = self.diff(from_cache(self._fn_residual, fn_residual), fn_residual)
        self._record(step, diff)
        return diff < threshold

    def mark_cached(self, step: int) -> None:
        """Count this step as cached (once, however many calls it has)."""
        if not self.cached_steps or self.cached_steps[-1] != step:
            self.cached_steps.append(step)

    def store(self, step: int, fn_residual: torch.Tensor, middle_out: Streams, middle_residual: Streams) -> None:
        """Keep what a computed step leaves for the next ones: the probe and the middle blocks' result.

        middle_out / middle_residual: (image stream, encoder stream or None) after the middle
        blocks and their residual. A None stream keeps what an earlier step stored, as cache-dit.
        """
        device = self.config.offload_device
        self._fn_residual = to_cache(fn_residual, device)
        values = middle_residual if self.config.caches_residual else middle_out
        for i, value in enumerate(values):
            if value is None:
                continue
            value = to_cache(value, device)
            if self._calibrator_config is None:
                self._stored[i] = value
                continue
            if self._calibrators[i] is None:
                self._calibrators[i] = new_calibrator(self._calibrator_config)
            self._calibrators[i].update(value)

    def approximate(self, step: int, middle_in: Streams) -> Streams:
        """The middle blocks' output on a cached step, per stream, from what store() kept."""
        result = []
        for i, value in enumerate(middle_in):
            if value is None:
                result.append(None)
                continue
            calibrator = self._calibrators[i]
            cached = calibrator.approximate() if calibrator is not None else self._stored[i]
            if cached is not None:
                cached = from_cache(cached, value)
                result.append(value + cached if self.config.caches_residual else cached)
            elif i == 1:
                result.append(value)  # an encoder stream with nothing cached passes through, as in cache-dit
            else:
                raise RuntimeError("DBCacheBranch.approximate() called before any store()")
        return result[0], result[1]


def _chunk(tensor: torch.Tensor | None, parts: int, index: int) -> torch.Tensor | None:
    return tensor.chunk(parts)[index] if tensor is not None else None


DiffFor = Callable[[Hashable], Callable[[torch.Tensor, torch.Tensor], float]]


@dataclass
class DBCacheRun:
    """Decisions and cached streams of one sampling run, per CFG branch: the one place DBCache decides.

    The live hooks and the target-speedup replay (`target_speedup.dbcache_counts`) both run
    through it. Per call: `decide()`; then, if it computes, `store()` after the middle blocks,
    else `approximate()` in their place. Tensors passed in hold every branch of the call, in
    `keys` order along the batch dimension, as ComfyUI batches them.
    """

    config: DBCacheConfig
    total_steps: int
    diff_for: DiffFor = lambda key: residual_diff  # how each branch measures its probe's change
    branches: dict[Hashable, DBCacheBranch] = field(default_factory=dict)
    records: list[CallRecord] = field(default_factory=list)

    def _branch(self, key: Hashable) -> DBCacheBranch:
        if key not in self.branches:
            self.branches[key] = DBCacheBranch(self.config, self.total_steps, self.diff_for(key))
        return self.branches[key]

    def decide(
        self, keys: Sequence[Hashable], fn_residuals: Sequence[torch.Tensor], step: int, may_cache: bool = True
    ) -> bool:
        """True when this call must compute its middle blocks.

        Every branch's gates run (each records its diff); one forward carries all its branches,
        so it caches only when all of them may, and `may_cache` allows it at all.
        """
        verdicts = [self._branch(k).can_cache(step, r) for k, r in zip(keys, fn_residuals, strict=True)]
        cached = all(verdicts) and may_cache
        if cached:
            for key in keys:
                self.branches[key].mark_cached(step)
        diffs = tuple(self.branches[k].residual_diffs.get(step) for k in keys)
        self.records.append(CallRecord(step, tuple(keys), diffs, not cached))
        return not cached

    def store(
        self,
        keys: Sequence[Hashable],
        step: int,
        fn_residuals: Sequence[torch.Tensor],
        middle_out: Streams,
        middle_residual: Streams,
    ) -> None:
        """After a computed call's middle blocks: each branch keeps its probe and its slice of the streams."""
        parts = len(keys)
        for i, key in enumerate(keys):
            self._branch(key).store(
                step,
                fn_residuals[i],
                (_chunk(middle_out[0], parts, i), _chunk(middle_out[1], parts, i)),
                (_chunk(middle_residual[0], parts, i), _chunk(middle_residual[1], parts, i)),
            )

    def approximate(self, keys: Sequence[Hashable], step: int, middle_in: Streams) -> Streams:
        """On a cached call: the middle blocks' output per stream, each branch from what it stored."""
        parts = len(keys)
        results = [
            self.branches[key].approximate(step, (_chunk(middle_in[0], parts, i), _chunk(middle_in[1], parts, i)))
            for i, key in enumerate(keys)
        ]
        img = torch.cat([r[0] for r in results])
        txt = torch.cat([r[1] for r in results]) if middle_in[1] is not None else None
        return img, txt

    def summary(self) -> RunSummary:
        return RunSummary(self.total_steps, tuple(self.records))
