"""What the caching methods need to know about one model family.

A family's forward splits into a prelude (embeddings, always run), a stack of blocks that
ComfyUI calls one by one through `patches_replace`, and an epilogue (final layer, always run).
Block arguments are ComfyUI's replace-patch dicts: "img" is the stream that is cached.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch

BlockKey = tuple[str, int]
BlockArgs = dict[str, Any]


@dataclass
class CallInfo:
    """One call of the diffusion model, as the caching methods see it.

    One per call and thread: ComfyUI's multi-GPU path runs CFG branches in parallel threads,
    so everything a method keeps between the blocks of one call lives here, never on the run.
    A method with scratch of its own between blocks extends it.
    """

    keys: tuple[Hashable, ...]  # the identity of each branch in the batch (`sampling_run.CallIdentity`)
    step: int
    in_window: bool
    timestep: torch.Tensor | None
    between_blocks: bool  # ControlNet residuals or per-block patches act between blocks
    diffusion_model: torch.nn.Module  # the instance called (a multi-GPU clone on another device)
    sigma: float = 0.0
    txt_len: int = 0  # text tokens beside the image in a joint sequence (set at the first block)
    img_len: int = 0
    stack_input: torch.Tensor | None = None  # the cached stream entering the stack (or the middle)
    last_text_stage: tuple[torch.Tensor, torch.Tensor] | None = None  # (img, txt) out of the last double block


@dataclass(frozen=True)
class Variant:
    """A member of a family, as ComfyUI's model config tells it apart (Flux.2 from Flux.1, ...).

    Args:
        label: how users know it (logs, the Cache report, README's Models table).
        preset: the TeaCache preset `model_type=auto` picks for it.
        matches: whether a loaded MODEL is this member, read from what ComfyUI built (its config
            class, unet_config, diffusion model); the family's last variant matches any model.
    """

    label: str
    preset: str
    matches: Callable[[Any], bool] = lambda model_patcher: True


def config_is(*names: str) -> Callable[[Any], bool]:
    """A `Variant.matches` for ComfyUI model-config classes by name (e.g. "Flux2")."""
    return lambda model_patcher: config_name(model_patcher) in names


def unet_config(model_patcher: Any) -> dict[str, Any]:
    """The unet_config ComfyUI detected for this MODEL ({} when unknown)."""
    return getattr(getattr(getattr(model_patcher, "model", None), "model_config", None), "unet_config", None) or {}


@dataclass(frozen=True)
class Family:
    """Glue for one model family.

    Args:
        name: short family name used in logs and presets.
        label: how users know the family (node descriptions, warnings, README).
        classes: the ComfyUI diffusion-model classes it patches, by exact class name (subclasses
            with a forward of their own, e.g. VaceWanModel, are never matched).
        configs: ComfyUI model-config class names it is limited to (empty: any), for classes
            that several families share (NextDiT is Z-Image and Lumina 2).
        block_keys: the `patches_replace["dit"]` keys of the stack, in execution order.
        indicator: TeaCache's indicator, from the first block's arguments.
        variants: the members ComfyUI builds on these classes, most specific first; the first that
            matches a MODEL names it and picks its TeaCache preset (the last matches any).
        cfg_shares_state: TeaCache keeps one state for both CFG branches in the reference
            (SGLang) implementation, so it is disabled while CFG is active.
        text_stream_kinds: block kinds whose "txt" is a text stream the blocks update (not a
            fixed context, as Wan's is): Cache-DiT caches that stream's residual too. When other
            blocks follow them, those run on one joint sequence of both streams, whose order
            each run reads from ComfyUI and verifies (`joint_layout`).
        object_patches: attribute path on the diffusion model -> replacement, for families whose
            ComfyUI forward has no `patches_replace` (Z-Image).
    """

    name: str
    label: str
    classes: frozenset[str]
    block_keys: Callable[[torch.nn.Module], list[BlockKey]]
    indicator: Callable[[torch.nn.Module, BlockArgs, CallInfo, str], torch.Tensor]
    variants: tuple[Variant, ...]
    cfg_shares_state: bool = False
    text_stream_kinds: frozenset[str] = frozenset()
    object_patches: Callable[[torch.nn.Module, Callable[[str], Any]], dict[str, Any]] | None = None
    configs: frozenset[str] = frozenset()

    def matches(self, class_name: str, config: str) -> bool:
        return class_name in self.classes and (not self.configs or config in self.configs)

    def variant(self, model_patcher: Any) -> Variant:
        """The member this MODEL is; the last variant when no other matches."""
        return next((v for v in self.variants[:-1] if v.matches(model_patcher)), self.variants[-1])

    def joint_position(self, diffusion_model: torch.nn.Module) -> int | None:
        """Position of the first block that runs on the joint (text + image) sequence, if any."""
        keys = self.block_keys(diffusion_model)
        for position in range(1, len(keys)):
            if keys[position - 1][0] in self.text_stream_kinds and keys[position][0] not in self.text_stream_kinds:
                return position
        return None


def config_name(model_patcher: Any) -> str:
    """Class name of ComfyUI's model config (e.g. WAN21_T2V), '' when unknown."""
    return type(getattr(getattr(model_patcher, "model", None), "model_config", None)).__name__


def reference_tokens(args: BlockArgs) -> int:
    """How many reference-image tokens ComfyUI appended to the image stream of this call.

    Reference images at timestep zero (Flux.2, Qwen-Image-Edit 2511) get a second modulation
    row; their tokens sit after the noisy image's, as many as ComfyUI reports.
    """
    counts = (args.get("transformer_options") or {}).get("reference_image_num_tokens")
    if not counts:
        raise ValueError("two modulation rows per sample, but ComfyUI reports no reference image tokens")
    return int(sum(counts))
