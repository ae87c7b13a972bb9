"""HunyuanVideo (comfy.ldm.hunyuan_video.model.HunyuanVideo): double, then single blocks on the joint sequence.

ComfyUI 0.3.75 joins it as cat(img, txt), 0.33 as cat(txt, img): each run reads and verifies the order.
"""

from __future__ import annotations

import torch

from ..double_stream import double_stream_indicator, double_then_single_keys
from ..family import BlockArgs, CallInfo, Family, Variant, config_is


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    return double_stream_indicator(dm.double_blocks[0], args, args.get("modulation_dims_img"))


FAMILY = Family(
    text_stream_kinds=frozenset({"double_block"}),
    name="hunyuan_video",
    label="HunyuanVideo",
    classes=frozenset({"HunyuanVideo"}),
    block_keys=double_then_single_keys,
    indicator=_indicator,
    variants=(
        Variant("HunyuanVideo 1.5", "hunyuan_video_1.5", config_is("HunyuanVideo15", "HunyuanVideo15_SR_Distilled")),
        Variant("HunyuanImage 2.1", "hunyuan_video", config_is("HunyuanImage21", "HunyuanImage21Refiner")),
        Variant("HunyuanVideo", "hunyuan_video"),
    ),
)
