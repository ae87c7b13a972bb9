"""HunyuanVideo (comfy.ldm.hunyuan_video.model.HunyuanVideo): double, then single on cat(img, txt)."""
from __future__ import annotations

from typing import Any

import torch

from .double_stream import double_stream_indicator
from .family import BlockArgs, CallInfo, Family


def _block_keys(dm: torch.nn.Module) -> list[tuple[str, int]]:
    return [("double_block", i) for i in range(len(dm.double_blocks))] + [
        ("single_block", i) for i in range(len(dm.single_blocks))
    ]


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    return double_stream_indicator(dm.double_blocks[0], args["img"], args["vec"], args.get("modulation_dims_img"))


def _auto_preset(model_patcher: Any) -> str:
    return "hunyuan_video"


FAMILY = Family(
    name="hunyuan_video",
    block_keys=_block_keys,
    indicator=_indicator,
    auto_preset=_auto_preset,
    joint_text_first=False,
)
