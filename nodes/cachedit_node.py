"""Apply Cache-DiT (DBCache / TaylorSeer / SCM): validate, build the config, patch a clone."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ..caching.dbcache import DBCacheConfig
from ..caching.offload import CACHE_DEVICES, offload_device
from ..model_patches.registry import detect_or_warn, supported
from .presets import TARGET_SPEEDUP_TOOLTIP, cachedit_target_threshold, check_target, load_user_preset, user_choices

logger = logging.getLogger(__name__)

SCM_PRESETS = ("none", "slow", "medium", "fast", "ultra", "custom")

_DEFAULTS: dict[str, Any] = {
    "Fn_compute_blocks": 1,
    "Bn_compute_blocks": 0,
    "residual_diff_threshold": 0.24,
    "max_warmup_steps": 4,
    "warmup_interval": 1,
    "max_cached_steps": -1,
    "max_continuous_cached_steps": 3,
    "enable_taylorseer": False,
    "taylorseer_order": 1,
    "taylorseer_cache_type": "residual",
    "scm_preset": "none",
    "scm_policy": "dynamic",
    "scm_compute_bins": "",
    "scm_cache_bins": "",
    "max_accumulated_residual_diff_threshold": 0.0,
    "cache_device": CACHE_DEVICES[0],
}


def _bins(name: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).replace(";", ",").split(",") if part.strip())
    except ValueError:
        raise ValueError(f"{name}: cannot parse {text!r}; give comma-separated whole numbers, e.g. '6, 2, 2'") from None


def build_config(**inputs: Any) -> DBCacheConfig:
    """The node's inputs as a validated config (ValueError names the input); None = linked, use default."""
    values = {name: _DEFAULTS[name] if inputs.get(name) is None else inputs[name] for name in _DEFAULTS}
    _check_ranges(values)
    accumulated = float(values["max_accumulated_residual_diff_threshold"])
    custom = values["scm_preset"] == "custom"  # bins left in the widgets count only for custom
    return DBCacheConfig(
        Fn_compute_blocks=int(values["Fn_compute_blocks"]),
        Bn_compute_blocks=int(values["Bn_compute_blocks"]),
        residual_diff_threshold=float(values["residual_diff_threshold"]),
        max_warmup_steps=int(values["max_warmup_steps"]),
        warmup_interval=int(values["warmup_interval"]),
        max_cached_steps=int(values["max_cached_steps"]),
        max_continuous_cached_steps=int(values["max_continuous_cached_steps"]),
        max_accumulated_residual_diff_threshold=accumulated if accumulated > 0 else None,
        enable_taylorseer=bool(values["enable_taylorseer"]),
        taylorseer_order=int(values["taylorseer_order"]),
        taylorseer_cache_type=str(values["taylorseer_cache_type"]),
        scm_preset=str(values["scm_preset"]),
        scm_compute_bins=_bins("scm_compute_bins", values["scm_compute_bins"]) if custom else (),
        scm_cache_bins=_bins("scm_cache_bins", values["scm_cache_bins"]) if custom else (),
        scm_policy=str(values["scm_policy"]),
        offload_device=offload_device(values["cache_device"]),
    )


def _check_ranges(values: dict[str, Any]) -> None:
    """The widgets' min/max, NaN rejected: ComfyUI skips its own range checks for a node whose
    VALIDATE_INPUTS takes **kwargs, and a linked value is only known at run time."""
    spec = ApplyCacheDiT.INPUT_TYPES()
    for name, (_, options) in {**spec["required"], **spec["optional"]}.items():
        if "min" not in options or values.get(name) is None:
            continue
        value = values[name]
        low, high = options["min"], options["max"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name} must be a number between {low} and {high}, got {value!r}")


def _int(default: int, low: int, high: int, tooltip: str) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": low, "max": high, "tooltip": tooltip})


class ApplyCacheDiT:
    DESCRIPTION = (
        "Cache-DiT at block level: always runs the first Fn and last Bn transformer blocks and skips the "
        "middle ones while the Fn blocks' residual barely changes between steps (DBCache), optionally "
        "extrapolating the skipped residual by a Taylor series (TaylorSeer) and following a step "
        "computation mask (SCM). Separate state per CFG branch. Supports " + supported() + "; other models "
        "pass through unchanged. Defaults as SGLang's cache-dit integration."
    )
    CATEGORY = "DiT Cache"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A copy of the model that uses Cache-DiT while sampling.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to accelerate (it is not modified)."}),
                "Fn_compute_blocks": _int(
                    1,
                    1,
                    128,
                    "First n blocks always computed; their residual decides "
                    "whether to cache (default 1, as SGLang; cache-dit's own default 8).",
                ),
                "Bn_compute_blocks": _int(
                    0,
                    0,
                    128,
                    "Last n blocks always computed on top of the cached state "
                    "(default 0). Fn + Bn must be below the model's block count.",
                ),
                "residual_diff_threshold": (
                    "FLOAT",
                    {
                        "default": 0.24,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Cache while the relative L1 change of the Fn residual stays below this "
                        "(default 0.24, as SGLang; cache-dit suggests 0.08-0.12 without a continuity "
                        "cap). 0 never caches.",
                    },
                ),
                "max_warmup_steps": _int(4, 0, 1000, "Leading steps that always compute (default 4)."),
                "warmup_interval": _int(1, 1, 1000, "Within warm-up, compute every n-th step (default 1)."),
                "max_cached_steps": _int(-1, -1, 1000, "At most this many cached steps per run (-1: no cap)."),
                "max_continuous_cached_steps": _int(
                    3, -1, 1000, "At most this many cached steps in a row (default 3, as SGLang; -1: no cap)."
                ),
                "enable_taylorseer": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Extrapolate the skipped residual "
                        "with a Taylor series instead of reusing it as is (default off: it can "
                        "hurt few-step distilled models). Best with Bn = 0.",
                    },
                ),
                "taylorseer_order": _int(1, 1, 4, "Taylor series order (default 1)."),
                "taylorseer_cache_type": (
                    ["residual", "hidden_states"],
                    {
                        "default": "residual",
                        "tooltip": "What TaylorSeer extrapolates: the middle blocks' residual or "
                        "their output hidden states (default residual).",
                    },
                ),
                "scm_preset": (
                    list(SCM_PRESETS),
                    {
                        "default": "none",
                        "tooltip": "Step computation mask: "
                        "which steps must compute (slow 18/28, medium 15/28, fast 11/28, ultra 8/28 "
                        "steps computed; custom uses the bins below, which must cover the step count). "
                        "Below 8 steps SCM is off, as SGLang does.",
                    },
                ),
                "scm_policy": (
                    ["dynamic", "static"],
                    {
                        "default": "dynamic",
                        "tooltip": "dynamic: on the mask's "
                        "cache steps DBCache still decides; static: they always cache.",
                    },
                ),
            },
            "optional": {
                "scm_compute_bins": (
                    "STRING",
                    {"default": "", "tooltip": "custom SCM: compute run lengths, e.g. '6, 2, 2, 2, 2, 1'."},
                ),
                "scm_cache_bins": (
                    "STRING",
                    {"default": "", "tooltip": "custom SCM: cache run lengths between them, e.g. '1, 3, 3, 3, 3'."},
                ),
                "max_accumulated_residual_diff_threshold": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.01,
                        "advanced": True,
                        "tooltip": "Advanced: stop caching once the run's summed residual diffs reach this (0: off).",
                    },
                ),
                "target_speedup": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 20.0,
                        "step": 0.05,
                        "tooltip": TARGET_SPEEDUP_TOOLTIP.format(fallback="residual_diff_threshold")
                        + " Only with Fn_compute_blocks 1 (what calibration measures); replaces "
                        "residual_diff_threshold when it can.",
                    },
                ),
                "calibration": (
                    ["none", *user_choices()],
                    {
                        "default": "none",
                        "tooltip": "The calibrated preset (Calibrate TeaCache on this model) whose runs "
                        "target_speedup replays.",
                    },
                ),
                "cache_device": (
                    list(CACHE_DEVICES),
                    {
                        "default": CACHE_DEVICES[0],
                        "tooltip": "Where cached residuals are kept: the model's device (fastest) or CPU "
                        "(saves GPU memory, costs copies every step).",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, **inputs: Any) -> bool | str:
        try:
            build_config(**inputs)
            check_target(inputs.get("target_speedup"))
            calibration = inputs.get("calibration")
            if calibration not in (None, "none"):
                load_user_preset(str(calibration), "calibration")  # a missing or malformed file: an error naming it
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    def apply(self, model: Any, **inputs: Any) -> tuple[Any]:
        family = detect_or_warn(model, "Apply Cache-DiT")
        if family is None:
            return (model,)
        config = build_config(**inputs)
        target = check_target(inputs.get("target_speedup"))
        if target:
            threshold = cachedit_target_threshold(inputs.get("calibration") or "none", config, target, family.name)
            config = replace(config, residual_diff_threshold=threshold)
        try:
            from ..model_patches.cachedit_patch import apply_cachedit
        except Exception as error:  # a ComfyUI whose patching API moved: never break the workflow
            logger.warning("Apply Cache-DiT: cannot patch models in this ComfyUI (%r); passing through", error)
            return (model,)
        return (apply_cachedit(model, family, config),)  # ValueError if Fn + Bn leave no middle block
