"""Qwen-Image (comfy.ldm.qwen_image.model.QwenImageTransformer2DModel): one list of dual-stream blocks."""

from __future__ import annotations

import torch

from .family import BlockArgs, CallInfo, Family


def _block_keys(dm: torch.nn.Module) -> list[tuple[str, int]]:
    return [("double_block", i) for i in range(len(dm.transformer_blocks))]


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    block = dm.transformer_blocks[0]
    img_mod1 = block.img_mod(args["vec"]).chunk(2, dim=-1)[0]
    return block._modulate(block.img_norm1(args["img"]), img_mod1)[0]


FAMILY = Family(
    text_stream_kinds=frozenset({"double_block"}),
    name="qwen_image",
    block_keys=_block_keys,
    indicator=_indicator,
    default_preset="qwen_image",
    cfg_shares_state=True,
)
