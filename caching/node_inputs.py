"""The inputs each node offers, declared once: name, default, range or choices, tooltip.

The nodes build their widgets from these tables and check every value with `read`, the one
validation path: ComfyUI skips its own range checks for a node that validates its inputs
itself, and a linked input's value exists only at run time. Defaults come from the methods'
configs where the input is a config field, so a default is never written twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .calibrators import CACHE_TYPES, CALIBRATORS, DMD_SVD_PRECISIONS, MAX_DMD_HISTORY, MAX_TAYLORSEER_ORDER
from .dbcache import SCM_POLICIES, SCM_PRESETS, DBCacheConfig
from .offload import CACHE_DEVICES, offload_device
from .teacache import TeaCacheConfig
from .teacache_presets import MODEL_TYPES, PRESETS, TeaCachePreset, parse_coefficients
from .user_presets import PREFIX, check_name

Value = bool | int | float | str


@dataclass(frozen=True)
class Input:
    """One widget input. Its kind follows its default: BOOLEAN, INT, FLOAT, a combo (choices) or STRING.

    Args:
        low / high: the allowed range of a number.
        off: a number outside the range that switches the input off (target_speedup's 0).
        choices: a combo's options; `calibrated` also accepts a calibrated preset 'user:<name>'
            (the node lists those on disk, and loading one names a missing or malformed file).
        parse: checks a STRING input and turns it into what the config takes.
        aliases: (old value, choice) pairs a combo still takes from workflows saved before it replaced
            another widget in its place (the editor stores widget values by position).
        optional / advanced: where the editor shows it (ComfyUI's optional and advanced flags).
    """

    name: str
    default: Value
    tooltip: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    off: float | None = None
    choices: tuple[str, ...] = ()
    calibrated: bool = False
    parse: Callable[[str], Any] | None = None
    aliases: tuple[tuple[Value, str], ...] = ()
    optional: bool = False
    advanced: bool = False

    def check(self, value: object) -> Any:
        """The value as the config takes it; the ValueError or TypeError names the input and what it allows."""
        if self.choices:
            value = next((new for old, new in self.aliases if value is old), value)
            if value in self.choices or (self.calibrated and isinstance(value, str) and value.startswith(PREFIX)):
                return value
            extra = f" or a calibrated preset '{PREFIX}<name>'" if self.calibrated else ""
            raise ValueError(f"{self.name} must be one of {', '.join(self.choices)}{extra}, got {value!r}")
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise TypeError(f"{self.name} must be true or false, got {value!r}")
            return value
        if isinstance(self.default, str):
            if not isinstance(value, str):
                raise TypeError(f"{self.name} must be text, got {value!r}")
            return self.parse(value) if self.parse else value
        return self._number(value)

    def _number(self, value: object) -> int | float:
        whole = isinstance(self.default, int)
        real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if real and value == self.off:
            return type(self.default)(value)
        if real and (not whole or value == int(value)) and self.low <= value <= self.high:
            return int(value) if whole else float(value)
        kind = "a whole number" if whole else "a number"
        off = f" ({self.off:g} = off)" if self.off is not None else ""
        raise ValueError(f"{self.name} must be {kind} between {self.low:g} and {self.high:g}{off}, got {value!r}")


def read(inputs: Sequence[Input], values: Mapping[str, Any]) -> dict[str, Any]:
    """Every input's checked value; a missing one or None (linked, known only at run time) is its default."""
    return {i.name: i.check(i.default if values.get(i.name) is None else values[i.name]) for i in inputs}


def _default(config: type, name: str) -> Any:
    return next(f.default for f in fields(config) if f.name == name)


def _bins(name: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in text.replace(";", ",").split(",") if part.strip())
        except ValueError:
            raise ValueError(f"{name}: cannot parse {text!r}; give comma-separated whole numbers, e.g. '6, 2, 2'") from None

    return parse


def _recommended() -> str:
    return "; ".join(
        f"{p.name} {p.recommended_thresh:g}" + (f" (borrowed from {p.borrowed})" if p.borrowed else "")
        for p in PRESETS.values()
    )


def _borrowed() -> str:
    return ", ".join(f"{p.name} from {p.borrowed}" for p in PRESETS.values() if p.borrowed)


_TARGET_SPEEDUP = (
    "Optional: aim for this many times fewer transformer evaluations (e.g. 2.0) instead of giving the "
    "threshold. Needs a calibrated preset (Calibrate TeaCache): the threshold is chosen by replaying its "
    "runs. Without one the node says so and uses {fallback}. 0 = off."
)


def _target_speedup(fallback: str, more: str) -> Input:
    tooltip = _TARGET_SPEEDUP.format(fallback=fallback) + " " + more
    return Input("target_speedup", 0.0, tooltip, low=1.0, high=20.0, step=0.05, off=0.0, optional=True)


def _cache_device(cost: str, optional: bool = False) -> Input:
    tooltip = f"Where cached residuals are kept: the model's device (fastest) or CPU (saves GPU memory, {cost})."
    return Input("cache_device", CACHE_DEVICES[0], tooltip, choices=CACHE_DEVICES, optional=optional)


def _int(name: str, low: int, high: int, tooltip: str) -> Input:
    return Input(name, _default(DBCacheConfig, name), tooltip, low=low, high=high)


TEACACHE: tuple[Input, ...] = (
    Input(
        "model_type",
        "auto",
        "Which rescale coefficients to use. auto picks the loaded model's preset (README's Models table). "
        "Presets for models without published coefficients are borrowed: " + _borrowed() + "; Calibrate "
        "TeaCache fits this model's own.",
        choices=MODEL_TYPES,
        calibrated=True,
    ),
    Input(
        "rel_l1_thresh",
        0.2,
        "Skip while the accumulated rescaled change stays below this. Higher = faster, less faithful; 0 never "
        "skips. Recommended: " + _recommended() + ".",
        low=0.0,
        high=10.0,
        step=0.01,
    ),
    Input(
        "start_percent",
        _default(TeaCacheConfig, "start_percent"),
        "Part of the denoising (0 = first step) from which skipping is allowed.",
        low=0.0,
        high=1.0,
        step=0.01,
    ),
    Input(
        "end_percent",
        _default(TeaCacheConfig, "end_percent"),
        "Part of the denoising after which every step computes again.",
        low=0.0,
        high=1.0,
        step=0.01,
    ),
    _cache_device("costs a copy per step"),
    Input(
        "coefficients",
        "",
        "Advanced: your own rescale polynomial, comma-separated, highest power first (e.g. from a calibration). "
        "Empty = the preset's.",
        parse=lambda text: parse_coefficients(text) or (),
        optional=True,
        advanced=True,
    ),
    _target_speedup("the preset's recommended threshold", "Replaces rel_l1_thresh when set."),
)

CACHEDIT: tuple[Input, ...] = (
    _int(
        "Fn_compute_blocks",
        1,
        128,
        "First n blocks always computed; their residual decides whether to cache (default 1, as SGLang; "
        "cache-dit's own default 8).",
    ),
    _int(
        "Bn_compute_blocks",
        0,
        128,
        "Last n blocks always computed on top of the cached state (default 0). Fn + Bn must be below the model's "
        "block count.",
    ),
    Input(
        "residual_diff_threshold",
        _default(DBCacheConfig, "residual_diff_threshold"),
        "Cache while the relative L1 change of the Fn residual stays below this (default 0.24, as SGLang; "
        "cache-dit suggests 0.08-0.12 without a continuity cap). 0 never caches.",
        low=0.0,
        high=1.0,
        step=0.01,
    ),
    _int("max_warmup_steps", 0, 1000, "Leading steps that always compute (default 4)."),
    _int("warmup_interval", 1, 1000, "Within warm-up, compute every n-th step (default 1)."),
    _int("max_cached_steps", -1, 1000, "At most this many cached steps per run (-1: no cap)."),
    _int(
        "max_continuous_cached_steps",
        -1,
        1000,
        "At most this many cached steps in a row (default 3, as SGLang; -1: no cap).",
    ),
    Input(
        "calibrator",
        _default(DBCacheConfig, "calibrator"),
        "Forecast the skipped blocks' residual instead of reusing the last computed one (cache-dit's calibrators): "
        "taylorseer (Taylor series from the last computed step), foca (BDF2 predictor + Heun corrector, "
        "recursive over cached steps), dmd (exponential fit of the recent computed steps). Default none: "
        "forecasts can hurt few-step distilled models. Best with Bn = 0. Replaces enable_taylorseer (on = taylorseer).",
        choices=CALIBRATORS,
        aliases=((True, "taylorseer"), (False, "none")),  # enable_taylorseer's values, saved in this place
    ),
    _int("taylorseer_order", 1, MAX_TAYLORSEER_ORDER, "taylorseer: Taylor series order (default 1)."),
    Input(
        "calibrator_cache_type",
        _default(DBCacheConfig, "calibrator_cache_type"),
        "What the calibrator forecasts: the middle blocks' residual or their output hidden states (default "
        "residual). Was taylorseer_cache_type.",
        choices=CACHE_TYPES,
    ),
    Input(
        "scm_preset",
        _default(DBCacheConfig, "scm_preset"),
        "Step computation mask: which steps must compute (slow 18/28, medium 15/28, fast 11/28, ultra 8/28 steps "
        "computed; custom uses the bins below, which must cover the step count). Below 8 steps SCM is off, as "
        "SGLang does.",
        choices=SCM_PRESETS,
    ),
    Input(
        "scm_policy",
        _default(DBCacheConfig, "scm_policy"),
        "dynamic: on the mask's cache steps DBCache still decides; static: they always cache.",
        choices=SCM_POLICIES,
    ),
    Input(
        "scm_compute_bins",
        "",
        "custom SCM: compute run lengths, e.g. '6, 2, 2, 2, 2, 1'.",
        parse=_bins("scm_compute_bins"),
        optional=True,
    ),
    Input(
        "scm_cache_bins",
        "",
        "custom SCM: cache run lengths between them, e.g. '1, 3, 3, 3, 3'.",
        parse=_bins("scm_cache_bins"),
        optional=True,
    ),
    Input(
        "max_accumulated_residual_diff_threshold",
        0.0,
        "Advanced: stop caching once the run's summed residual diffs reach this (0: off).",
        low=0.0,
        high=100.0,
        step=0.01,
        optional=True,
        advanced=True,
    ),
    _target_speedup(
        "residual_diff_threshold",
        "Only with Fn_compute_blocks 1 (what calibration measures); replaces residual_diff_threshold when it can.",
    ),
    Input(
        "calibration",
        "none",
        "The calibrated preset (Calibrate TeaCache on this model) whose runs target_speedup replays.",
        choices=("none",),
        calibrated=True,
        optional=True,
    ),
    _cache_device("costs copies every step", optional=True),
    Input(
        "dmd_history",
        _default(DBCacheConfig, "dmd_history"),
        "dmd: computed steps kept for the fit (default 6, cache-dit's; at least 4 evenly spaced ones are needed, "
        "else it falls back to TaylorSeer order 1).",
        low=2,
        high=MAX_DMD_HISTORY,
        optional=True,
        advanced=True,
    ),
    Input(
        "dmd_rank",
        _default(DBCacheConfig, "dmd_rank"),
        "dmd: modes kept by the SVD (0 = automatic, cache-dit's default).",
        low=0,
        high=MAX_DMD_HISTORY,
        optional=True,
        advanced=True,
    ),
    Input(
        "dmd_svd_precision",
        _default(DBCacheConfig, "dmd_svd_precision"),
        "dmd: low = randomised SVD (fastest), medium = default SVD, high = the most exact driver.",
        choices=DMD_SVD_PRECISIONS,
        optional=True,
        advanced=True,
    ),
)

CALIBRATION: tuple[Input, ...] = (
    Input(
        "preset_name",
        "my_model",
        "Name of the preset to write (letters, digits, _ - .); saved in the ComfyUI user directory under "
        "dit_cache/teacache_presets/<name>.json.",
        parse=check_name,
    ),
    Input(
        "model_type",
        "auto",
        "Which preset's indicator and always-computed steps to calibrate for (Wan: *_ret presets use the e0 "
        "indicator). Its coefficients are not used.",
        choices=MODEL_TYPES,
    ),
    Input(
        "append",
        True,
        "Add this run to the preset's earlier runs and refit on all of them; off: start the preset afresh.",
    ),
)


def teacache_config(values: Mapping[str, Any], preset: TeaCachePreset) -> TeaCacheConfig:
    """Apply TeaCache's checked values (see `read`) as a config for `preset`."""
    return TeaCacheConfig(
        rel_l1_thresh=values["rel_l1_thresh"],
        coefficients=values["coefficients"] or preset.coefficients,
        start_percent=values["start_percent"],
        end_percent=values["end_percent"],
        warmup_steps=preset.warmup_steps,
        force_last_step=preset.force_last_step,
        offload_device=offload_device(values["cache_device"]),
    )


def dbcache_config(values: Mapping[str, Any]) -> DBCacheConfig:
    """Apply Cache-DiT's checked values (see `read`) as a config; bins count only for a custom mask."""
    custom = values["scm_preset"] == "custom"
    translated = {"max_accumulated_residual_diff_threshold", "scm_compute_bins", "scm_cache_bins"}
    same = ({f.name for f in fields(DBCacheConfig)} & values.keys()) - translated
    return DBCacheConfig(
        **{name: values[name] for name in same},
        max_accumulated_residual_diff_threshold=values["max_accumulated_residual_diff_threshold"] or None,
        scm_compute_bins=values["scm_compute_bins"] if custom else (),
        scm_cache_bins=values["scm_cache_bins"] if custom else (),
        offload_device=offload_device(values["cache_device"]),
    )
