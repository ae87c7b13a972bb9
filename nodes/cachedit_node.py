"""Apply Cache-DiT (DBCache / calibrators / SCM): check the inputs, build the config, patch a clone."""

from __future__ import annotations

import logging
from typing import Any

from comfy_api.latest import io

from ..caching.configs import dbcache_run_config, load_user_preset
from ..caching.dbcache import DBCacheConfig
from ..caching.node_inputs import CACHEDIT, dbcache_config, read
from ..model_patches.registry import detect_or_warn, supported
from .presets import presets_directory
from .schema import validation, widgets

logger = logging.getLogger(__name__)


def _config(values: dict[str, Any]) -> DBCacheConfig:
    """The checked config; a chosen calibration is loaded too, so a missing or malformed file is named."""
    if values["calibration"] != "none":
        load_user_preset(values["calibration"], "calibration", presets_directory())
    return dbcache_config(values)


class ApplyCacheDiT(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTCache_ApplyCacheDiT",
            display_name="Apply Cache-DiT (DBCache/TaylorSeer/SCM)",
            category="DiT Cache",
            description=(
                "Cache-DiT at block level: always runs the first Fn and last Bn transformer blocks and skips the "
                "middle ones while the Fn blocks' residual barely changes between steps (DBCache), optionally "
                "forecasting the skipped residual with one of cache-dit's calibrators (TaylorSeer, FoCa, DMD) and "
                "following a step computation mask (SCM). Separate state per CFG branch. Supports "
                + supported()
                + "; other models pass through unchanged. Defaults as SGLang's cache-dit integration."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion model to accelerate (it is not modified)."),
                *widgets(CACHEDIT),
            ],
            outputs=[io.Model.Output(tooltip="A copy of the model that uses Cache-DiT while sampling.")],
        )

    @classmethod
    def validate_inputs(cls, **values: Any) -> bool | str:
        return validation(lambda: _config(read(CACHEDIT, values)))

    @classmethod
    def execute(cls, model: Any, **values: Any) -> io.NodeOutput:
        values = read(CACHEDIT, values)
        family = detect_or_warn(model, "Apply Cache-DiT")
        if family is None:
            return io.NodeOutput(model)
        config = dbcache_run_config(values, presets_directory(), family.name)
        try:
            from ..model_patches.cachedit_patch import apply_cachedit
        except Exception as error:  # a ComfyUI whose patching API moved: never break the workflow
            logger.warning("Apply Cache-DiT: cannot patch models in this ComfyUI (%r); passing through", error)
            return io.NodeOutput(model)
        return io.NodeOutput(apply_cachedit(model, family, config))  # ValueError if Fn + Bn leave no middle block
