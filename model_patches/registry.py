"""Which family glue fits a loaded model, by the diffusion model's exact class.

Subclasses with their own forward (VaceWanModel, WanModel_S2V, ...) are not matched: their
loops do extra work between blocks that a skipped stack would silently drop.
Family modules are imported one by one, so a ComfyUI that moved one family's internals
disables only that family (with a warning), never the pack.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from .family import Family, config_name

logger = logging.getLogger(__name__)

_MODULES = {
    "Flux": "flux",
    "WanModel": "wan",
    "HunyuanVideo": "hunyuan_video",
    "QwenImageTransformer2DModel": "qwen_image",
    "NextDiT": "z_image",
}
_CONFIG_FILTER = {"NextDiT": {"ZImage"}}  # NextDiT is also Lumina 2, which has no preset here

SUPPORTED = "Flux, Wan 2.1/2.2, HunyuanVideo, Qwen-Image, Z-Image"


def _load(module: str) -> Family | None:
    try:
        return importlib.import_module(f"{__package__}.{module}").FAMILY
    except Exception as error:  # an import error here must not take the pack down
        logger.warning("dit-cache: %s support is unavailable in this ComfyUI (%s)", module, error)
        return None


def diffusion_model_class(model_patcher: Any) -> str:
    model = getattr(model_patcher, "model", None)
    return type(getattr(model, "diffusion_model", model)).__name__


def detect(model_patcher: Any) -> Family | None:
    """The family glue for this MODEL, or None when the pack does not support it."""
    class_name = diffusion_model_class(model_patcher)
    module = _MODULES.get(class_name)
    if module is None:
        return None
    allowed_configs = _CONFIG_FILTER.get(class_name)
    if allowed_configs is not None and config_name(model_patcher) not in allowed_configs:
        return None
    return _load(module)


def detect_or_warn(model_patcher: Any, node: str) -> Family | None:
    """`detect`, with the one warning a node gives when it passes an unsupported model through."""
    family = detect(model_patcher)
    if family is None:
        logger.warning(
            "%s: %s is not supported (supported: %s); the model passes through unchanged",
            node,
            diffusion_model_class(model_patcher),
            SUPPORTED,
        )
    return family
