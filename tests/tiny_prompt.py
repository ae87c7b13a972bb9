"""Run an example workflow's API prompt (as the editor produced it) on the tiny test models.

Only what needs real model files changes: the diffusion model loader loads the tiny model of the
family, text encoders become tiny conditioning (edit encoders with one tiny reference latent per
image), empty-latent, VAE-encode and image-to-video nodes give tiny latents, a ControlNet model
patch becomes a tiny per-block patch, and the VAE decode becomes a SaveLatent (there is no tiny
VAE), so the image/video loaders, preprocessors and savers around them go. Our nodes, LoRA and
ModelSampling nodes, guidance nodes and the samplers with all their settings and links stay
exactly as the editor wrote them.
"""
from __future__ import annotations

import copy
import zlib
from pathlib import Path
from typing import Any

import safetensors.torch
import workflows_api

Prompt = dict[str, dict[str, Any]]

TEXT_ENCODERS = {"CLIPTextEncode", "CLIPTextEncodeFlux"}
EDIT_ENCODERS = {"TextEncodeQwenImageEditPlus"}  # text plus reference images (image1, image2, ...)
EMPTY_LATENTS = {
    "EmptySD3LatentImage", "EmptyHunyuanLatentVideo", "EmptyLatentImage", "Wan22ImageToVideoLatent",
    "EmptyFlux2LatentImage", "EmptyHunyuanVideo15Latent", "VAEEncode",
}
IMAGE_TO_VIDEO = {"WanImageToVideo", "Wan22FunControlToVideo"}  # the control video: in the tiny conditioning
MODEL_PATCHES = {"QwenImageDiffsynthControlnet"}  # Z-Image's Fun ControlNet: a patch at every block
DECODERS = {"VAEDecode", "VAEDecodeTiled"}
DROPPED = {
    "CLIPLoader", "DualCLIPLoader", "VAELoader", "CLIPVisionLoader", "CLIPVisionEncode", "LoadImage",
    "SaveImage", "PreviewImage", "CreateVideo", "SaveVideo", "SaveAnimatedWEBP", "SaveImageAdvanced",
    "LoadVideo", "GetVideoComponents", "Canny", "GetImageSize", "ImageScaleToMaxDimension", "FluxKontextImageScale",
    "ModelPatchLoader", "ResolutionSelector",
}


def expert_variant(unet_name: str, variant: str) -> str:
    """Wan 2.2 14B loads two experts: the high-noise and low-noise tiny experts by file name."""
    if variant == "wan22_high" and "low_noise" in unet_name:
        return "wan22_low"
    return variant


def tiny(prompt: Prompt, variant: str, prefix: str) -> Prompt:
    """`prompt` with model files swapped for the tiny `variant`; latents saved under output/`prefix`."""
    out: Prompt = {}
    for node_id, node in copy.deepcopy(prompt).items():
        kind, inputs = node["class_type"], node["inputs"]
        seed = zlib.crc32(node_id.encode()) % 2**31  # ids inside subgraphs read "outer:inner"
        if kind in DROPPED:
            continue
        if kind == "UNETLoader":
            node = workflows_api.loader(expert_variant(inputs["unet_name"], variant))
        elif kind in TEXT_ENCODERS | EDIT_ENCODERS:
            images = sum(name.startswith("image") for name in inputs) if kind in EDIT_ENCODERS else 0
            inputs = {"variant": variant, "seed": seed, "length": 8, "references": images}
            node = {"class_type": "DiTCacheTest_Conditioning", "inputs": inputs}
        elif kind in EMPTY_LATENTS:
            node = {"class_type": "DiTCacheTest_Latent", "inputs": {"variant": variant, "batch": 1, "size": 0}}
        elif kind in IMAGE_TO_VIDEO:
            keep = {name: inputs[name] for name in ("positive", "negative")}
            node = {"class_type": "DiTCacheTest_ImageToVideo", "inputs": {**keep, "variant": variant}}
        elif kind in MODEL_PATCHES:
            keep = {name: inputs[name] for name in ("model", "strength")}
            node = {"class_type": "DiTCacheTest_BlockPatch", "inputs": keep}
        elif kind in DECODERS:
            node = {"class_type": "SaveLatent", "inputs": {"samples": inputs["samples"], "filename_prefix": prefix}}
        out[node_id] = node
    for node_id, node in out.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] not in out:
                raise ValueError(f"node {node_id} ({node['class_type']}) input {name} links to dropped node {value[0]}")
    return out


def write_loras(prompt: Prompt, loras_dir: Path) -> None:
    """Empty LoRA files under the names the prompt's LoRA loaders ask for: the real loader runs, changing nothing."""
    for node in prompt.values():
        if node["class_type"].startswith("LoraLoader"):
            path = loras_dir / node["inputs"]["lora_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            safetensors.torch.save_file({}, str(path))
