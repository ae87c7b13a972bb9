"""Shared indicator for families built on Flux's DoubleStreamBlock (Flux, HunyuanVideo)."""

from __future__ import annotations

from typing import Any

import torch
from comfy.ldm.flux.layers import apply_mod

from .family import BlockArgs, reference_tokens


def double_stream_indicator(block: torch.nn.Module, args: BlockArgs, modulation_dims: Any = None) -> torch.Tensor:
    """The first block's modulated image input: (1 + scale) * norm1(img) + shift, row by row of tokens."""
    img, vec = args["img"], args["vec"]
    if getattr(block, "modulation", True):
        mod = block.img_mod(vec)[0]
    else:  # Flux.2: modulation computed once for all blocks, passed in as vec
        mod = vec[0][0]
    rows = mod.shift.shape[1] if mod.shift.ndim == 3 else 1
    if rows > 1 and modulation_dims is None:  # reference images at timestep zero take the second row
        noisy = img.shape[1] - reference_tokens(args)
        modulation_dims = [(0, noisy, 0), (noisy, img.shape[1], 1)]
    return apply_mod(block.img_norm1(img), 1 + mod.scale, mod.shift, modulation_dims)


def double_then_single_keys(dm: torch.nn.Module) -> list[tuple[str, int]]:
    """Replace-patch keys of a model that runs its double blocks, then its single blocks."""
    return [("double_block", i) for i in range(len(dm.double_blocks))] + [
        ("single_block", i) for i in range(len(dm.single_blocks))
    ]
