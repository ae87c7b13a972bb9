"""Z-Image (comfy.ldm.lumina.model.NextDiT with Z-Image modulation).

NextDiT's layer loop has no `patches_replace`, so each `layers.{i}.forward` gets an object
patch (undone when the model is unpatched) that runs the layer through its
`patches_replace["dit"][("layer", i)]` hook, as the other families' loops do. Nothing depends
on the body of ComfyUI's `_forward`: 0.3.75, 0.33 and later call their layers the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import comfy.ldm.lumina.model as lumina
import torch

from ..family import BlockArgs, CallInfo, Family, Variant
from ..sampling_hooks import call_arguments, called_model, eager, eager_frame


def _block_keys(dm: torch.nn.Module) -> list[tuple[str, int]]:
    return [("layer", i) for i in range(len(dm.layers))]


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    """The first layer's modulated attention input: norm1(x) * (1 + scale_msa), as the layer computes it."""
    layer = dm.layers[0]
    scale_msa = layer.adaLN_modulation(args["vec"]).chunk(4, dim=1)[0]
    zero_index = args.get("timestep_zero_index")
    if zero_index is None:
        return layer.attention_norm1(args["img"]) * (1 + scale_msa.unsqueeze(1))
    # Reference images at timestep zero (ComfyUI 0.33+): ComfyUI's own per-token rows.
    return lumina.modulate(layer.attention_norm1(args["img"]), scale_msa, timestep_zero_index=zero_index)


@eager
def _block_args(forward: Callable, x: torch.Tensor, args: tuple, kwargs: dict, options: dict) -> BlockArgs:
    """The layer's call as block arguments: its input, the modulation input, and ComfyUI's options."""
    named = call_arguments(forward, (x, *args), kwargs)
    block_args = {"img": x, "vec": named.get("adaln_input"), "transformer_options": options}
    if named.get("timestep_zero_index") is not None:
        block_args["timestep_zero_index"] = named["timestep_zero_index"]
    return block_args


class LayerForward:
    """`layers.{i}.forward` object patch: hands the layer to its replace hook, if one is set.

    The layer is looked up in the diffusion model being called, so multi-GPU clones run their
    own; an object patch another pack set on the same forward before ours keeps running.
    """

    def __init__(self, index: int, model: torch.nn.Module, earlier: Callable | None):
        self.index = index
        self.model = model  # the model this was installed on: used outside a diffusion-model call
        self.earlier = earlier

    def _forward(self) -> Callable:
        if self.earlier is not None:
            return self.earlier
        layer = (called_model() or self.model).layers[self.index]
        return type(layer).forward.__get__(layer)

    @eager_frame  # as the other families' block hooks: torch.compile skips this frame, compiles the layer
    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        forward = self._forward()
        options = kwargs.get("transformer_options") or {}
        hook = options.get("patches_replace", {}).get("dit", {}).get(("layer", self.index))
        if hook is None:
            return forward(x, *args, **kwargs)
        block_args = _block_args(forward, x, args, kwargs, options)

        def original_block(block: BlockArgs) -> BlockArgs:
            return {"img": forward(block["img"], *args, **kwargs)}

        return hook(block_args, {"original_block": original_block})["img"]

    def __deepcopy__(self, memo: dict) -> LayerForward:
        return self  # holds no state of its own; the layer is found per call


def _object_patches(dm: torch.nn.Module, current: Callable[[str], Any]) -> dict[str, Any]:
    patches = {}
    for i, layer in enumerate(dm.layers):
        existing = current(f"layers.{i}.forward")
        if isinstance(existing, LayerForward):  # ours, from a node applied earlier: replaced, not chained
            existing = existing.earlier
        elif getattr(existing, "__self__", None) is layer:  # the layer's own forward
            existing = None
        patches[f"layers.{i}.forward"] = LayerForward(i, dm, existing)
    return patches


FAMILY = Family(
    name="z_image",
    label="Z-Image",
    classes=frozenset({"NextDiT"}),
    configs=frozenset({"ZImage"}),  # NextDiT is also Lumina 2, which has no preset here
    block_keys=_block_keys,
    indicator=_indicator,
    # Turbo and base share their config; the pixel-space model is another class (NextDiTPixelSpace).
    variants=(Variant("Z-Image", "z_image"),),
    object_patches=_object_patches,
)
