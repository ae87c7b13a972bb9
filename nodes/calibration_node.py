"""Calibrate TeaCache and its report: record a normal run, fit the rescale polynomial, save a preset."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from comfy_api.latest import io

from ..caching.calibration import samples
from ..caching.node_inputs import CALIBRATION, read
from ..caching.teacache_presets import PRESETS
from ..caching.user_presets import PREFIX, RECOMMENDED_SPEEDUP, path_for, to_json
from ..model_patches.registry import detect_or_warn, diffusion_model_class, supported
from .presets import presets_directory
from .report_images import render_fit, to_array
from .schema import validation, widgets

logger = logging.getLogger(__name__)


def image_batch(*images: Any) -> torch.Tensor:
    """Pillow images of equal size as ComfyUI's IMAGE: float [B, H, W, C] in 0..1."""
    return torch.stack([torch.from_numpy(to_array(image)) for image in images])


class CalibrateTeaCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTCache_CalibrateTeaCache",
            display_name="Calibrate TeaCache",
            category="DiT Cache",
            description=(
                "Records, during one normal sampling run (nothing is skipped), how much TeaCache's indicator and "
                "the model's output change from step to step, fits TeaCache's rescale polynomial (degree 4) and "
                "saves it as a preset 'user:<name>' that Apply TeaCache lists after a refresh. Runs with other "
                "prompts, seeds and resolutions add to the same fit. Supports " + supported() + "."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to calibrate (it is not modified)."),
                *widgets(CALIBRATION),
            ],
            outputs=[io.Model.Output(tooltip="The same model, observed while sampling: connect it to the sampler.")],
        )

    @classmethod
    def validate_inputs(cls, **values: Any) -> bool | str:
        return validation(lambda: read(CALIBRATION, values))

    @classmethod
    def execute(cls, model: Any, **values: Any) -> io.NodeOutput:
        values = read(CALIBRATION, values)
        family = detect_or_warn(model, "Calibrate TeaCache")
        if family is None:
            return io.NodeOutput(model)
        # Imported here: the patching code needs ComfyUI's patching API, which loading the pack must not.
        from ..model_patches.calibration_patch import CalibrationPatch, apply_calibration

        model_type = values["model_type"]
        base = PRESETS[family.variant(model).preset if model_type == "auto" else model_type]
        config_name = type(getattr(model.model, "model_config", None)).__name__
        model_name = f"{diffusion_model_class(model)} ({config_name})"
        patch = CalibrationPatch(
            family, family.variant(model).label, base, values["preset_name"], presets_directory(), values["append"],
            model_name,
        )
        patch.existing()  # a malformed or mismatched preset file fails here, naming the file, before sampling
        return io.NodeOutput(apply_calibration(model, patch))


class CalibrationReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTCache_CalibrationReport",
            display_name="TeaCache calibration report",
            category="DiT Cache",
            description=(
                "Shows the fit of the latest Calibrate TeaCache run: indicator change against output change, the "
                "fitted curve, coefficients, R² and sample count, as an IMAGE and as JSON. Place it after the "
                "sampler."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL output of Calibrate TeaCache."),
                io.Latent.Input("latent", tooltip="The sampler's output: makes the report run after sampling."),
            ],
            outputs=[io.Image.Output(display_name="plot"), io.String.Output(display_name="json")],
        )

    @classmethod
    def execute(cls, model: Any, latent: Any) -> io.NodeOutput:
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
        return io.NodeOutput(image_batch(render_fit(x, y, user.fit.coefficients, caption)), json.dumps(data, indent=1))
