"""Apply TeaCache: validate, pick the preset, patch a clone of the MODEL."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from ..caching.offload import CACHE_DEVICES, offload_device
from ..caching.teacache import TeaCacheConfig
from ..caching.teacache_presets import MODEL_TYPES, PRESETS, TeaCachePreset, parse_coefficients
from ..model_patches.registry import cfg_shared, detect_or_warn, supported
from .presets import (
    TARGET_SPEEDUP_TOOLTIP,
    check_target,
    resolve_teacache_preset,
    teacache_target_threshold,
    user_choices,
)

logger = logging.getLogger(__name__)


def _preset_list() -> str:
    return "; ".join(
        f"{p.name} {p.recommended_thresh:g}" + (f" (borrowed from {p.borrowed})" if p.borrowed else "")
        for p in PRESETS.values()
    )


_LINKED_STAND_INS = {
    "model_type": "auto",
    "rel_l1_thresh": 0.0,
    "start_percent": 0.0,
    "end_percent": 1.0,
    "cache_device": CACHE_DEVICES[0],
    "coefficients": "",
    "target_speedup": 0.0,
}


def _number(name: str, value: object) -> float:
    """float(value), with an error that names the input (float() alone names only the value)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None


def build_config(
    preset: TeaCachePreset,
    rel_l1_thresh: float,
    start_percent: float,
    end_percent: float,
    cache_device: str,
    coefficients: str,
) -> TeaCacheConfig:
    """The node's inputs as a validated config; ValueError names the offending input."""
    return TeaCacheConfig(
        rel_l1_thresh=float(rel_l1_thresh),
        coefficients=parse_coefficients(coefficients or "") or preset.coefficients,
        start_percent=float(start_percent),
        end_percent=float(end_percent),
        warmup_steps=preset.warmup_steps,
        force_last_step=preset.force_last_step,
        offload_device=offload_device(cache_device),
    )


class ApplyTeaCache:
    DESCRIPTION = (
        "TeaCache: skips whole transformer passes while the first block's modulated input barely "
        "changes between steps, reusing the last computed residual. Supports " + supported() + ". "
        "Turns itself off for a run where CFG is active on " + cfg_shared() + "; other families keep "
        "separate positive/negative caches. Other models pass through unchanged."
    )
    CATEGORY = "DiT Cache"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A copy of the model that uses TeaCache while sampling.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to accelerate (it is not modified)."}),
                "model_type": (
                    list(MODEL_TYPES) + user_choices(),
                    {
                        "default": "auto",
                        "tooltip": "Which rescale coefficients to use. auto picks from the loaded model "
                        "(Wan I2V -> 480P, Wan 2.2 14B experts -> Wan 2.1 14B). Qwen-Image, Z-Image "
                        "and Wan 2.2 have no published coefficients: their presets are borrowed "
                        "(qwen_image from flux, z_image from hunyuan_video, wan2.2 from wan2.1).",
                    },
                ),
                "rel_l1_thresh": (
                    "FLOAT",
                    {
                        "default": 0.2,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": "Skip while the accumulated rescaled change stays below this. Higher = faster, "
                        "less faithful; 0 never skips. Recommended: " + _preset_list() + ".",
                    },
                ),
                "start_percent": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Part of the denoising (0 = first step) from which skipping is allowed.",
                    },
                ),
                "end_percent": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Part of the denoising after which every step computes again.",
                    },
                ),
                "cache_device": (
                    list(CACHE_DEVICES),
                    {
                        "default": "main_device",
                        "tooltip": "Where cached residuals are kept: the model's device (fastest) or CPU "
                        "(saves GPU memory, costs a copy per step).",
                    },
                ),
            },
            "optional": {
                "coefficients": (
                    "STRING",
                    {
                        "default": "",
                        "advanced": True,
                        "tooltip": "Advanced: your own rescale polynomial, comma-separated, highest power first "
                        "(e.g. from a calibration). Empty = the preset's.",
                    },
                ),
                "target_speedup": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 20.0,
                        "step": 0.05,
                        "tooltip": TARGET_SPEEDUP_TOOLTIP.format(fallback="the preset's recommended threshold")
                        + " Replaces rel_l1_thresh when set.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(
        cls,
        model_type: str,
        rel_l1_thresh: float,
        start_percent: float,
        end_percent: float,
        cache_device: str,
        coefficients: str = "",
        target_speedup: float = 0.0,
    ) -> bool | str:
        given = {
            "model_type": model_type,
            "rel_l1_thresh": rel_l1_thresh,
            "start_percent": start_percent,
            "end_percent": end_percent,
            "cache_device": cache_device,
            "coefficients": coefficients,
            "target_speedup": target_speedup,
        }
        # ComfyUI passes None for an input linked from another node: its value exists only at run
        # time, where build_config checks it; a permissive stand-in lets the other inputs be checked.
        values = {name: _LINKED_STAND_INS[name] if value is None else value for name, value in given.items()}
        try:
            model_type = values["model_type"]
            preset = next(iter(PRESETS.values())) if model_type == "auto" else resolve_teacache_preset(model_type)[0]
            check_target(values["target_speedup"])
            thresh, start, end = (_number(n, values[n]) for n in ("rel_l1_thresh", "start_percent", "end_percent"))
            if not 0.0 <= thresh <= 10.0:
                raise ValueError(f"rel_l1_thresh must be between 0 and 10, got {thresh}")
            build_config(preset, thresh, start, end, values["cache_device"], values["coefficients"])
        except (TypeError, ValueError) as error:
            return str(error)
        return True

    def apply(
        self,
        model: Any,
        model_type: str,
        rel_l1_thresh: float,
        start_percent: float,
        end_percent: float,
        cache_device: str,
        coefficients: str = "",
        target_speedup: float = 0.0,
    ) -> tuple[Any]:
        family = detect_or_warn(model, "Apply TeaCache")
        if family is None:
            return (model,)
        preset, user = resolve_teacache_preset(family.auto_preset(model) if model_type == "auto" else model_type)
        if preset.family != family.name:
            logger.warning(
                "Apply TeaCache: preset %s was made for %s, not for this %s model",
                preset.name,
                preset.family,
                family.name,
            )
        if preset.borrowed:
            logger.info("Apply TeaCache: %s", preset.describe())
        config = build_config(preset, rel_l1_thresh, start_percent, end_percent, cache_device, coefficients)
        target = check_target(target_speedup)
        if target:
            config = replace(config, rel_l1_thresh=teacache_target_threshold(model, preset, user, config, target))
        try:
            from ..model_patches.teacache_patch import apply_teacache

            return (apply_teacache(model, family, preset, config),)
        except Exception as error:  # a ComfyUI whose patching API moved: never break the workflow
            logger.warning("Apply TeaCache: cannot patch this model in this ComfyUI (%r); passing it through", error)
            return (model,)
