"""Calibrate TeaCache and its report: record a normal run, fit the rescale polynomial, save a preset."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch

from ..caching.calibration import samples
from ..caching.teacache_presets import MODEL_TYPES, PRESETS
from ..caching.user_presets import PREFIX, RECOMMENDED_SPEEDUP, check_name, path_for, to_json
from ..model_patches.registry import detect_or_warn, diffusion_model_class, supported
from .presets import presets_directory
from .report_images import render_fit, to_array

logger = logging.getLogger(__name__)


def image_batch(*images: Any) -> torch.Tensor:
    """Pillow images of equal size as ComfyUI's IMAGE: float [B, H, W, C] in 0..1."""
    return torch.stack([torch.from_numpy(to_array(image)) for image in images])


class CalibrateTeaCache:
    DESCRIPTION = (
        "Records, during one normal sampling run (nothing is skipped), how much TeaCache's indicator and the "
        "model's output change from step to step, fits TeaCache's rescale polynomial (degree 4) and saves it as "
        "a preset 'user:<name>' that Apply TeaCache lists after a refresh. Runs with other prompts, seeds and "
        "resolutions add to the same fit. Supports " + supported() + "."
    )
    CATEGORY = "DiT Cache"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The same model, observed while sampling: connect it to the sampler.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to calibrate (it is not modified)."}),
                "preset_name": (
                    "STRING",
                    {
                        "default": "my_model",
                        "tooltip": "Name of the preset to write (letters, digits, _ - .); saved in the ComfyUI "
                        "user directory under dit_cache/teacache_presets/<name>.json.",
                    },
                ),
                "model_type": (
                    list(MODEL_TYPES),
                    {
                        "default": "auto",
                        "tooltip": "Which preset's indicator and always-computed steps to calibrate for "
                        "(Wan: *_ret presets use the e0 indicator). Its coefficients are not used.",
                    },
                ),
                "append": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Add this run to the preset's earlier runs and refit on all of them; "
                        "off: start the preset afresh.",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, preset_name: str, model_type: str, append: bool) -> bool | str:
        try:
            if preset_name is not None:
                check_name(preset_name)
            if model_type is not None and model_type != "auto" and model_type not in PRESETS:
                raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
        except ValueError as error:
            return str(error)
        return True

    def apply(self, model: Any, preset_name: str, model_type: str, append: bool) -> tuple[Any]:
        family = detect_or_warn(model, "Calibrate TeaCache")
        if family is None:
            return (model,)
        # Imported here: the patching code needs ComfyUI's patching API, which loading the pack must not.
        from ..model_patches.calibration_patch import CalibrationPatch, apply_calibration

        base = PRESETS[family.auto_preset(model) if model_type == "auto" else model_type]
        config_name = type(getattr(model.model, "model_config", None)).__name__
        model_name = f"{diffusion_model_class(model)} ({config_name})"
        patch = CalibrationPatch(family, base, check_name(preset_name), presets_directory(), bool(append), model_name)
        patch.existing()  # a malformed or mismatched preset file fails here, naming the file, before sampling
        return (apply_calibration(model, patch),)


class CalibrationReport:
    DESCRIPTION = (
        "Shows the fit of the latest Calibrate TeaCache run: indicator change against output change, the "
        "fitted curve, coefficients, R² and sample count, as an IMAGE and as JSON. Place it after the sampler."
    )
    CATEGORY = "DiT Cache"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("plot", "json")
    FUNCTION = "report"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The MODEL output of Calibrate TeaCache."}),
                "latent": ("LATENT", {"tooltip": "The sampler's output: makes the report run after sampling."}),
            }
        }

    def report(self, model: Any, latent: Any) -> tuple[torch.Tensor, str]:
        from ..model_patches.calibration_patch import CalibrationPatch
        from ..model_patches.sampling_hooks import installed

        patch = installed(model, CalibrationPatch)
        if patch is None:
            raise ValueError("TeaCache calibration report: this MODEL does not come from Calibrate TeaCache")
        user = patch.last_preset
        if user is None:
            raise ValueError(
                "TeaCache calibration report: no calibration run was saved on this MODEL"
                + (f" ({patch.last_error})" if patch.last_error else " (is the sampler's LATENT connected?)")
            )
        x, y = samples(user.runs)
        path = path_for(patch.directory, user.name)
        caption = [
            f"preset {PREFIX}{user.name} ({user.preset.family}, indicator {user.preset.indicator}): {path}",
            f"coefficients (highest power first): {', '.join(f'{c:.6g}' for c in user.fit.coefficients)}",
            (
                f"R^2 {user.fit.r2:.4f}   samples {user.fit.samples}   runs {len(user.runs)}   "
                f"recommended rel_l1_thresh {user.preset.recommended_thresh:g} ({RECOMMENDED_SPEEDUP:g}x on these runs)"
            ),
        ]
        data = {k: v for k, v in to_json(user).items() if k != "runs"}
        data["runs"] = len(user.runs)
        data["path"] = str(path)
        return image_batch(render_fit(x, y, user.fit.coefficients, caption)), json.dumps(data, indent=1)
