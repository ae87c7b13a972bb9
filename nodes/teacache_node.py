"""Apply TeaCache: check the inputs, pick the preset, patch a clone of the MODEL."""

from __future__ import annotations

import logging
from typing import Any

from comfy_api.latest import io

from ..caching.configs import resolve_teacache_preset, teacache_run_config
from ..caching.node_inputs import TEACACHE, read, teacache_config
from ..caching.teacache_presets import PRESETS
from ..model_patches.registry import cfg_shared, detect_or_warn, supported
from .presets import presets_directory
from .schema import validation, widgets

logger = logging.getLogger(__name__)


class ApplyTeaCache(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTCache_ApplyTeaCache",
            display_name="Apply TeaCache",
            category="DiT Cache",
            description=(
                "TeaCache: skips whole transformer passes while the first block's modulated input barely "
                "changes between steps, reusing the last computed residual. Supports " + supported() + ". "
                "Turns itself off for a run where CFG is active on " + cfg_shared() + "; other families keep "
                "separate positive/negative caches. Other models pass through unchanged."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate (it is not modified)."),
                *widgets(TEACACHE),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model that uses TeaCache while sampling.")],
        )

    @classmethod
    def validate_inputs(cls, **values: Any) -> bool | str:
        def check() -> None:
            checked = read(TEACACHE, values)
            model_type = checked["model_type"]
            # auto is decided by the model, known only at run time: any built-in preset checks the rest.
            preset = (
                next(iter(PRESETS.values()))
                if model_type == "auto"
                else resolve_teacache_preset(model_type, presets_directory())[0]
            )
            teacache_config(checked, preset)

        return validation(check)

    @classmethod
    def execute(cls, model: Any, **values: Any) -> io.NodeOutput:
        values = read(TEACACHE, values)
        family = detect_or_warn(model, "Apply TeaCache")
        if family is None:
            return io.NodeOutput(model)
        variant = family.variant(model)
        model_type = variant.preset if values["model_type"] == "auto" else values["model_type"]
        sampling = model.get_model_object("model_sampling")
        preset, config = teacache_run_config(values, model_type, presets_directory(), sampling.percent_to_sigma)
        if preset.family != family.name:
            logger.warning(
                "Apply TeaCache: preset %s was made for %s, not for this %s model",
                preset.name,
                preset.family,
                variant.label,
            )
        logger.info("Apply TeaCache: %s, preset %s", variant.label, preset.describe())
        try:
            from ..model_patches.teacache_patch import apply_teacache

            return io.NodeOutput(apply_teacache(model, family, preset, config))
        except Exception as error:  # a ComfyUI whose patching API moved: never break the workflow
            logger.warning("Apply TeaCache: cannot patch this model in this ComfyUI (%r); passing it through", error)
            return io.NodeOutput(model)
