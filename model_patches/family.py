"""What the caching methods need to know about one model family.

A family's forward splits into a prelude (embeddings, always run), a stack of blocks that
ComfyUI calls one by one through `patches_replace`, and an epilogue (final layer, always run).
Block arguments are ComfyUI's replace-patch dicts: "img" is the stream that is cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

BlockKey = tuple[str, int]
BlockArgs = dict[str, Any]


@dataclass
class CallInfo:
    """One call of the diffusion model, as the caching methods see it."""

    keys: tuple[Any, ...]  # one per CFG branch in the batch (cond uuids)
    step: int
    in_window: bool
    timestep: torch.Tensor | None
    between_blocks: bool  # ControlNet residuals or per-block patches act between blocks
    txt_len: int = 0
    img_len: int = 0


@dataclass(frozen=True)
class Family:
    """Glue for one model family.

    Args:
        name: short family name used in logs and presets.
        block_keys: the `patches_replace["dit"]` keys of the stack, in execution order.
        indicator: TeaCache's indicator, from the first block's arguments.
        default_preset: TeaCache preset that `model_type=auto` picks.
        choose_preset: for families with several presets (Wan), picks one for a loaded model.
        joint_text_first: for families whose last blocks run on cat(txt, img) (True) or
            cat(img, txt) (False), where the image tokens sit in those blocks' output.
        cfg_shares_state: TeaCache keeps one state for both CFG branches in the reference
            (SGLang) implementation, so it is disabled while CFG is active.
        text_stream_kinds: block kinds whose "txt" is a text stream the blocks update (not a
            fixed context, as Wan's is): Cache-DiT caches that stream's residual too.
        object_patches: attribute name on the diffusion model -> factory of a replacement,
            for families whose ComfyUI forward has no `patches_replace` (Z-Image).
    """

    name: str
    block_keys: Callable[[torch.nn.Module], list[BlockKey]]
    indicator: Callable[[torch.nn.Module, BlockArgs, CallInfo, str], torch.Tensor]
    default_preset: str
    joint_text_first: bool | None = None
    cfg_shares_state: bool = False
    text_stream_kinds: frozenset[str] = frozenset()
    object_patches: dict[str, Callable[[torch.nn.Module], Any]] = field(default_factory=dict)
    choose_preset: Callable[[Any], str] | None = None

    def auto_preset(self, model_patcher: Any) -> str:
        return self.choose_preset(model_patcher) if self.choose_preset else self.default_preset

    def image_tokens(self, kind: str, hidden: torch.Tensor, call: CallInfo) -> torch.Tensor:
        """The image part of a block's "img" output (single blocks carry text and image)."""
        if kind != "single_block" or self.joint_text_first is None:
            return hidden
        if self.joint_text_first:
            return hidden[:, call.txt_len :]
        return hidden[:, : call.img_len]

    def joint(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """The sequence single blocks run on, as ComfyUI's loop concatenates the two streams."""
        return torch.cat((txt, img) if self.joint_text_first else (img, txt), dim=1)

    def split(self, joint: torch.Tensor, call: CallInfo) -> tuple[torch.Tensor, torch.Tensor]:
        """(img, txt) of a joint sequence: the inverse of `joint`."""
        if self.joint_text_first:
            return joint[:, call.txt_len :], joint[:, : call.txt_len]
        return joint[:, : call.img_len], joint[:, call.img_len :]


def config_name(model_patcher: Any) -> str:
    """Class name of ComfyUI's model config (e.g. WAN21_T2V), '' when unknown."""
    return type(getattr(model_patcher.model, "model_config", None)).__name__
