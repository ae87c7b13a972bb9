"""Wan 2.1 / 2.2 (comfy.ldm.wan.model.WanModel): one list of blocks; Wan 2.2 14B = two such models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from comfy.ldm.wan.model import sinusoidal_embedding_1d

from ..family import BlockArgs, CallInfo, Family, Variant, config_is


def _block_keys(dm: torch.nn.Module) -> list[tuple[str, int]]:
    return [("double_block", i) for i in range(len(dm.blocks))]


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    """TeaCache4Wan2.1's indicator: the time embedding e, or its projection e0 in "ret" mode."""
    if mode == "e0":
        return args["vec"]
    t = call.timestep
    e = dm.time_embedding(sinusoidal_embedding_1d(dm.freq_dim, t.flatten()).to(dtype=args["img"].dtype))
    return e.reshape(t.shape[0], -1, e.shape[-1])


def _is_14b(model_patcher: Any) -> bool:
    return getattr(model_patcher.model.diffusion_model, "dim", 0) >= 5120


def _fun_control(size_14b: bool) -> Callable[[Any], bool]:
    return lambda model: config_is("WAN21_FunControl2V")(model) and _is_14b(model) == size_14b


FAMILY = Family(
    name="wan",
    label="Wan 2.1/2.2",
    classes=frozenset({"WanModel"}),
    block_keys=_block_keys,
    indicator=_indicator,
    # Wan 2.1 and 2.2 14B experts share their configs: their presets are Wan 2.1's fits.
    variants=(
        Variant("Wan 2.2 TI2V 5B", "wan2.2_ti2v_5B", config_is("WAN22_T2V")),
        # First-last-frame and Fun Inpaint checkpoints load as I2V models too.
        Variant("Wan I2V 14B", "wan2.1_i2v_480p_14B", config_is("WAN21_I2V")),
        Variant("Wan Fun Control 14B", "wan2.1_t2v_14B", _fun_control(True)),
        Variant("Wan Fun Control 1.3B", "wan2.1_t2v_1.3B", _fun_control(False)),
        Variant("Wan T2V 14B", "wan2.1_t2v_14B", _is_14b),
        Variant("Wan T2V 1.3B", "wan2.1_t2v_1.3B"),
    ),
)
