"""Qwen-Image (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel): one list of dual-stream blocks."""

from __future__ import annotations

from typing import Any

import torch

from ..family import BlockArgs, CallInfo, Family, Variant, reference_tokens


def _block_keys(dm: torch.nn.Module) -> list[tuple[str, int]]:
    return [("double_block", i) for i in range(len(dm.transformer_blocks))]


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    """The first block's modulated image input, as the block computes it (ComfyUI's own `_modulate`)."""
    block = dm.transformer_blocks[0]
    img, temb = args["img"], args["vec"]
    img_mod1 = block.img_mod(temb).chunk(2, dim=-1)[0]
    if temb.shape[0] == img.shape[0]:
        return block._modulate(block.img_norm1(img), img_mod1)[0]
    # Qwen-Image-Edit 2511: a second row of timestep-zero modulation for the reference tokens after the image.
    return block._modulate(block.img_norm1(img), img_mod1, img.shape[1] - reference_tokens(args))[0]


def _references_at_timestep_zero(model_patcher: Any) -> bool:
    dm = getattr(model_patcher.model, "diffusion_model", None)
    return getattr(dm, "default_ref_method", None) == "index_timestep_zero"


FAMILY = Family(
    text_stream_kinds=frozenset({"double_block"}),
    name="qwen_image",
    label="Qwen-Image",
    classes=frozenset({"QwenImageTransformer2DModel"}),
    block_keys=_block_keys,
    indicator=_indicator,
    variants=(
        # Edit 2511 checkpoints carry __index_timestep_zero__, which ComfyUI turns into this default;
        # Qwen-Image and Edit (2509) share their config and are told apart by nothing ComfyUI builds.
        Variant("Qwen-Image-Edit 2511", "qwen_image_edit", _references_at_timestep_zero),
        Variant("Qwen-Image", "qwen_image"),
    ),
    cfg_shares_state=True,
)
