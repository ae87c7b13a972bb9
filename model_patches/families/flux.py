"""Flux.1 and Flux.2 (comfy.ldm.flux.model.Flux): double blocks, then single blocks on the joint sequence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..double_stream import double_stream_indicator, double_then_single_keys
from ..family import BlockArgs, CallInfo, Family, Variant, config_is, unet_config


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    return double_stream_indicator(dm.double_blocks[0], args)


def _flux2_text_width(width: int) -> Callable[[Any], bool]:
    """Flux.2 members differ by their text encoder, which the text input's width gives away: three
    hidden layers of Mistral Small 3.1 (dev), of Qwen3-8B (Klein 9B) or of Qwen3-4B (Klein 4B)."""
    return lambda model: config_is("Flux2")(model) and unet_config(model).get("context_in_dim") == width


FAMILY = Family(
    text_stream_kinds=frozenset({"double_block"}),
    name="flux",
    label="Flux",
    classes=frozenset({"Flux"}),
    block_keys=double_then_single_keys,
    indicator=_indicator,
    # Distilled and base checkpoints of one member (Klein 4B, Klein base 4B) share their config.
    variants=(
        Variant("Flux.2 dev", "flux2", _flux2_text_width(3 * 5120)),
        Variant("Flux.2 Klein 9B", "flux2", _flux2_text_width(3 * 4096)),
        Variant("Flux.2 Klein 4B", "flux2", _flux2_text_width(3 * 2560)),
        Variant("Flux.2", "flux2", config_is("Flux2")),
        Variant("Flux.1", "flux"),
    ),
    cfg_shares_state=True,
)
