"""Flux (comfy.ldm.flux.model.Flux): double blocks, then single blocks on cat(txt, img)."""
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
    return double_stream_indicator(dm.double_blocks[0], args["img"], args["vec"])


def _auto_preset(model_patcher: Any) -> str:
    return "flux"


FAMILY = Family(
    name="flux",
    block_keys=_block_keys,
    indicator=_indicator,
    auto_preset=_auto_preset,
    joint_text_first=True,
    cfg_shares_state=True,
)
