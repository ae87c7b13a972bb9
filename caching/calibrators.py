"""Calibrators: what stands in for the skipped middle blocks on a cached step, with cache-dit's own classes.

Plain reuse returns the middle blocks' residual (or output) of the last computed step. A calibrator
forecasts it instead: TaylorSeer by a Taylor expansion from the last computed step, FoCa by a BDF2
predictor with a Heun corrector (recursive over cached steps), DMD by an exponential fit of the
recent computed steps. cache-dit ships them as plain tensor state machines
(`cache_dit.caching.cache_contexts.calibrators`); DBCache keeps one per CFG branch and stream and
drives it as cache-dit's cache context does: `mark_step_begin` at every transformer call of the
branch, `update` with a computed call's value, `approximate` on a cached one. So each forecast is
cache-dit's by construction; tests/unit/test_dbcache_engine.py runs cache-dit's engine beside ours.
"""

from __future__ import annotations

from typing import Any

CALIBRATORS = ("none", "taylorseer", "foca", "dmd")
CACHE_TYPES = ("residual", "hidden_states")
DMD_SVD_PRECISIONS = ("low", "medium", "high")
MAX_TAYLORSEER_ORDER = 4
MAX_DMD_HISTORY = 32


class CacheDitNotInstalledError(ImportError):
    """SCM step masks and calibrators come from cache-dit, which may be missing from a ComfyUI."""


def import_cache_dit(what: str, instead: str) -> Any:
    """The cache_dit module, or an error that says what needs it and what works without it."""
    try:
        import cache_dit
    except ImportError as error:
        raise CacheDitNotInstalledError(
            f"{what} comes from cache-dit, which is not installed: pip install cache-dit, or {instead}"
        ) from error
    return cache_dit


def cache_dit_config(
    calibrator: str, cache_type: str, taylorseer_order: int, dmd_history: int, dmd_rank: int, dmd_svd_precision: str
) -> Any:
    """cache-dit's config of this calibrator (its options under cache-dit's own names)."""
    cache_dit = import_cache_dit("The calibrator", "set calibrator to 'none'")
    if calibrator == "taylorseer":
        return cache_dit.TaylorSeerCalibratorConfig(
            calibrator_cache_type=cache_type, taylorseer_order=taylorseer_order
        )
    if calibrator == "foca":
        return cache_dit.FoCaCalibratorConfig(calibrator_cache_type=cache_type)
    if calibrator == "dmd":
        return cache_dit.DMDCalibratorConfig(
            calibrator_cache_type=cache_type,
            dmd_history=dmd_history,
            dmd_rank=dmd_rank,
            dmd_svd_precision=dmd_svd_precision,
        )
    raise ValueError(f"calibrator must be one of {', '.join(CALIBRATORS[1:])} here, got {calibrator!r}")


def new_calibrator(config: Any) -> Any:
    """A fresh calibrator for one stream of one CFG branch, built by cache-dit's own factory."""
    from cache_dit.caching.cache_contexts.calibrators import Calibrator

    return Calibrator(config)
