"""Test-only ComfyUI nodes: tiny models, conditioning and latents of every DiT family.

The test server loads this package from its own ``custom_nodes`` folder; the shipped pack
never registers it. Flux, Qwen-Image and Z-Image must come from ``DiTCacheTest_TinyModel``
because ComfyUI cannot detect them from a tiny file; Wan and HunyuanVideo workflows load
their tiny checkpoints with ComfyUI's own ``UNETLoader``.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # tiny_models lives in tests/

import tiny_models

CATEGORY = "DiT Cache/testing"
_VARIANTS = list(tiny_models.VARIANTS + tiny_models.EXTRA_VARIANTS)
_MODELS: dict[str, Any] = {}  # variant -> MODEL, so repeated prompts skip the build


def _variant_input() -> tuple[list[str], dict[str, str]]:
    return (_VARIANTS, {"tooltip": "Which tiny model family (tests/tiny_models.py)."})


class TinyModel:
    """A tiny deterministic model of `variant`, built in-process (cached per variant)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"variant": _variant_input()}}

    def load(self, variant: str) -> tuple[Any]:
        if variant not in _MODELS:
            _MODELS[variant] = tiny_models.load_model(variant)
        return (_MODELS[variant],)


class Conditioning:
    """Random text conditioning of the family's width (with pooled output where it needs one)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "variant": _variant_input(),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1}),
                "length": ("INT", {"default": 8, "min": 1, "max": 512, "tooltip": "Text tokens."}),
            }
        }

    def build(self, variant: str, seed: int, length: int) -> tuple[list[list[Any]]]:
        return (tiny_models.conditioning(variant, seed=seed, length=length),)


class Latent:
    """A LATENT of the family's shape (e.g. 5-D for video and Qwen-Image)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "variant": _variant_input(),
                "batch": ("INT", {"default": 1, "min": 1, "max": 16}),
                "size": ("INT", {"default": 0, "min": 0, "max": 256,
                                 "tooltip": "Latent height = width; 0 = the family's default."}),
            }
        }

    def build(self, variant: str, batch: int, size: int) -> tuple[dict[str, Any]]:
        return (tiny_models.latent(variant, batch, size=size or None),)


class ImageToVideo:
    """Stands in for WanImageToVideo in example workflows: the conditioning as given and a tiny video LATENT.

    The tiny Wan experts are text-to-video models, so no start image is encoded (there is no tiny VAE).
    """

    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "variant": _variant_input(),
            }
        }

    def build(self, positive: list[Any], negative: list[Any], variant: str) -> tuple[Any, Any, dict[str, Any]]:
        return positive, negative, tiny_models.latent(variant)


NODE_CLASS_MAPPINGS = {
    "DiTCacheTest_TinyModel": TinyModel,
    "DiTCacheTest_Conditioning": Conditioning,
    "DiTCacheTest_Latent": Latent,
    "DiTCacheTest_ImageToVideo": ImageToVideo,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DiTCacheTest_TinyModel": "Tiny DiT Model (test)",
    "DiTCacheTest_Conditioning": "Tiny DiT Conditioning (test)",
    "DiTCacheTest_Latent": "Tiny DiT Latent (test)",
    "DiTCacheTest_ImageToVideo": "Tiny Image to Video (test)",
}
