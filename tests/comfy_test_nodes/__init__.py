"""Test-only ComfyUI nodes: tiny models, conditioning and latents of every DiT family, and the trained fixtures.

The test server (and the `make run` demo's) loads this package from its own ``custom_nodes``
folder; the shipped pack never registers it. Flux, Qwen-Image and Z-Image must come from ``DiTCacheTest_TinyModel``
because ComfyUI cannot detect them from a tiny file; Wan and HunyuanVideo workflows load
their tiny checkpoints with ComfyUI's own ``UNETLoader``.
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)  # tiny_models lives in tests/

import tiny_models
import torch
import trained_models

CATEGORY = "DiT Cache/testing"
_VARIANTS = list(tiny_models.VARIANTS + tiny_models.EXTRA_VARIANTS)
_MODELS: dict[str, Any] = {}  # variant or fixture -> MODEL, so repeated prompts skip the build


def _variant_input() -> tuple[list[str], dict[str, str]]:
    return (_VARIANTS, {"tooltip": "Which tiny model family (tests/tiny_models.py)."})


def _loaded(key: str, load: Callable[[], Any]) -> Any:
    """A model loaded once per server: every graph of a test run shares it."""
    if key not in _MODELS:
        _MODELS[key] = load()
    return _MODELS[key]


class TinyModel:
    """A tiny deterministic model of `variant`, built in-process (cached per variant)."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"variant": _variant_input()}}

    def load(self, variant: str) -> tuple[Any]:
        return (_loaded(variant, lambda: tiny_models.load_model(variant)),)


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
            },
            "optional": {
                "references": ("INT", {"default": 0, "min": 0, "max": 4,
                                       "tooltip": "Reference latents, as an edit model's text encoder adds per image."}),
            },
        }

    def build(self, variant: str, seed: int, length: int, references: int = 0) -> tuple[list[list[Any]]]:
        conditioning = tiny_models.conditioning(variant, seed=seed, length=length)
        if references:  # the same images for every prompt, as both branches of an edit workflow get them
            latents = [tiny_models.reference_latent(variant, seed=i) for i in range(references)]
            conditioning[0][1]["reference_latents"] = latents
        return (conditioning,)


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


class BlockPatch:
    """Stands in for a ControlNet model patch (Z-Image's Fun ControlNet): adds to the image stream after every block.

    Like the real one it acts through ComfyUI's per-block patches at every step, so a cache must never replay it.
    """

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0})}}

    def patch(self, model: Any, strength: float) -> tuple[Any]:
        def add_control(args: dict[str, Any]) -> dict[str, Any]:
            return {"img": args["img"] + 1e-3 * strength * (args["block_index"] + 1)}

        patched = model.clone()
        patched.set_model_patch(add_control, "double_block")
        return (patched,)


def _fixture_input() -> tuple[list[str], dict[str, str]]:
    return (list(trained_models.FIXTURES), {"tooltip": "Which trained fixture (tests/trained_models.py)."})


class TrainedModel:
    """A small trained Flux or Wan (bench/fixtures/): its steps change as a trained model's do, so caches skip."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"fixture": _fixture_input()}}

    def load(self, fixture: str) -> tuple[Any]:
        return (_loaded(f"trained-{fixture}", lambda: trained_models.load_model(fixture)),)


class TrainedConditioning:
    """The prompt a fixture was trained on: one of its classes (a shape and colour), or -1 for the empty prompt."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "fixture": _fixture_input(),
                "class_index": ("INT", {"default": 0, "min": -1, "max": trained_models.CLASSES - 1,
                                        "tooltip": "The class to draw; -1 = the empty prompt (CFG's negative)."}),
            }
        }

    def build(self, fixture: str, class_index: int) -> tuple[list[list[Any]]]:
        return (trained_models.conditioning(fixture, None if class_index < 0 else class_index),)


class TrainedLatent:
    """An empty LATENT of the shape the fixture was trained on."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"fixture": _fixture_input()}}

    def build(self, fixture: str) -> tuple[dict[str, torch.Tensor]]:
        return (trained_models.empty_latent(fixture),)


class LatentPicture:
    """A fixture's LATENT drawn as an IMAGE (no VAE exists for it): its channels on the class colours' axes."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",)}}

    def draw(self, samples: dict[str, torch.Tensor]) -> tuple[torch.Tensor]:
        return (trained_models.picture(samples["samples"]),)


NODE_CLASS_MAPPINGS = {
    "DiTCacheTest_TinyModel": TinyModel,
    "DiTCacheTest_Conditioning": Conditioning,
    "DiTCacheTest_Latent": Latent,
    "DiTCacheTest_ImageToVideo": ImageToVideo,
    "DiTCacheTest_BlockPatch": BlockPatch,
    "DiTCacheTest_TrainedModel": TrainedModel,
    "DiTCacheTest_TrainedConditioning": TrainedConditioning,
    "DiTCacheTest_TrainedLatent": TrainedLatent,
    "DiTCacheTest_LatentPicture": LatentPicture,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DiTCacheTest_TinyModel": "Tiny DiT Model (test)",
    "DiTCacheTest_Conditioning": "Tiny DiT Conditioning (test)",
    "DiTCacheTest_Latent": "Tiny DiT Latent (test)",
    "DiTCacheTest_ImageToVideo": "Tiny Image to Video (test)",
    "DiTCacheTest_BlockPatch": "Tiny ControlNet Block Patch (test)",
    "DiTCacheTest_TrainedModel": "Trained Fixture Model (test)",
    "DiTCacheTest_TrainedConditioning": "Trained Fixture Prompt (test)",
    "DiTCacheTest_TrainedLatent": "Trained Fixture Latent (test)",
    "DiTCacheTest_LatentPicture": "Fixture Latent Picture (test)",
}
