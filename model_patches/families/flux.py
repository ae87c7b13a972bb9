"""Flux (comfy.ldm.flux.model.Flux): double blocks, then single blocks on the joint sequence."""

from __future__ import annotations

import torch

from ..double_stream import double_stream_indicator, double_then_single_keys
from ..family import BlockArgs, CallInfo, Family


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    return double_stream_indicator(dm.double_blocks[0], args)


FAMILY = Family(
    text_stream_kinds=frozenset({"double_block"}),
    name="flux",
    label="Flux",
    classes=frozenset({"Flux"}),
    block_keys=double_then_single_keys,
    indicator=_indicator,
    default_preset="flux",
    cfg_shares_state=True,
)
