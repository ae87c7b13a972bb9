"""Wan 2.1 / 2.2 (comfy.ldm.wan.model.WanModel): one list of blocks; Wan 2.2 14B = two such models."""

from __future__ import annotations

from typing import Any

import torch
from comfy.ldm.wan.model import sinusoidal_embedding_1d

from ..family import BlockArgs, CallInfo, Family, config_name


def _block_keys(dm: torch.nn.Module) -> list[tuple[str, int]]:
    return [("double_block", i) for i in range(len(dm.blocks))]


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    """TeaCache4Wan2.1's indicator: the time embedding e, or its projection e0 in "ret" mode."""
    if mode == "e0":
        return args["vec"]
    t = call.timestep
    e = dm.time_embedding(sinusoidal_embedding_1d(dm.freq_dim, t.flatten()).to(dtype=args["img"].dtype))
    return e.reshape(t.shape[0], -1, e.shape[-1])


def _auto_preset(model_patcher: Any) -> str:
    dm = model_patcher.model.diffusion_model
    name = config_name(model_patcher)
    if name == "WAN22_T2V":  # the Wan 2.2 TI2V 5B config (48 latent channels)
        return "wan2.2_ti2v_5B"
    size = "14B" if dm.dim >= 5120 else "1.3B"
    if name == "WAN21_I2V":
        return "wan2.1_i2v_480p_14B"
    return f"wan2.1_t2v_{size}"


FAMILY = Family(
    name="wan",
    label="Wan 2.1/2.2",
    classes=frozenset({"WanModel"}),
    block_keys=_block_keys,
    indicator=_indicator,
    default_preset="wan2.1_t2v_14B",
    choose_preset=_auto_preset,
)
