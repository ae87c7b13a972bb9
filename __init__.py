"""comfyui-dit-cache: TeaCache and Cache-DiT for diffusion transformers in ComfyUI."""

import logging

try:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except Exception as error:  # never take ComfyUI down with the pack
    logging.getLogger(__name__).warning("dit-cache: nodes not loaded: %r", error)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
