"""Z-Image (comfy.ldm.lumina.model.NextDiT with Z-Image modulation).

ComfyUI 0.3.75's NextDiT loop has no `patches_replace`, so this family replaces `_forward`
(an object patch, undone when the model is unpatched) with a mirror of 0.3.75's whose layer
loop honours `patches_replace["dit"][("layer", i)]` exactly as the other families' loops do.
If the mirror does not fit the installed ComfyUI, it warns once and runs ComfyUI's own.
"""

from __future__ import annotations

import logging
from typing import Any

import comfy.ldm.common_dit
import torch

from .family import BlockArgs, CallInfo, Family

logger = logging.getLogger(__name__)


def _block_keys(dm: torch.nn.Module) -> list[tuple[str, int]]:
    return [("layer", i) for i in range(len(dm.layers))]


def _indicator(dm: torch.nn.Module, args: BlockArgs, call: CallInfo, mode: str) -> torch.Tensor:
    """The first layer's modulated attention input: norm1(x) * (1 + scale_msa)."""
    layer = dm.layers[0]
    scale_msa = layer.adaLN_modulation(args["vec"]).chunk(4, dim=1)[0]
    return layer.attention_norm1(args["img"]) * (1 + scale_msa.unsqueeze(1))


def _run_layers(
    dm: torch.nn.Module,
    x: torch.Tensor,
    mask: Any,
    freqs_cis: torch.Tensor,
    adaln_input: torch.Tensor,
    transformer_options: dict,
) -> torch.Tensor:
    blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
    for i, layer in enumerate(dm.layers):
        replace = blocks_replace.get(("layer", i))
        if replace is None:
            x = layer(x, mask, freqs_cis, adaln_input, transformer_options=transformer_options)
            continue

        def original_block(args: BlockArgs, layer: torch.nn.Module = layer) -> BlockArgs:
            return {
                "img": layer(
                    args["img"], args["mask"], args["pe"], args["vec"], transformer_options=args["transformer_options"]
                )
            }

        args = {"img": x, "vec": adaln_input, "pe": freqs_cis, "mask": mask, "transformer_options": transformer_options}
        x = replace(args, {"original_block": original_block})["img"]
    return x


def _mirrored_forward(
    dm: torch.nn.Module,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    num_tokens: Any,
    attention_mask: Any = None,
    **kwargs: Any,
) -> torch.Tensor:
    """NextDiT._forward of ComfyUI 0.3.75, with a replaceable layer loop."""
    h, w = x.shape[-2:]
    x = comfy.ldm.common_dit.pad_to_patch_size(x, (dm.patch_size, dm.patch_size))
    t = dm.t_embedder((1.0 - timesteps) * dm.time_scale, dtype=x.dtype)
    cap_feats = dm.cap_embedder(context)
    transformer_options = kwargs.get("transformer_options", {})
    x_is_tensor = isinstance(x, torch.Tensor)
    x, mask, img_size, cap_size, freqs_cis = dm.patchify_and_embed(
        x, cap_feats, attention_mask, t, num_tokens, transformer_options=transformer_options
    )
    x = _run_layers(dm, x, mask, freqs_cis.to(x.device), t, transformer_options)
    x = dm.final_layer(x, t)
    x = dm.unpatchify(x, img_size, cap_size, return_tensor=x_is_tensor)[:, :, :h, :w]
    return -x


class ReplaceableForward:
    """`_forward` object patch: the mirror, or ComfyUI's own once the mirror has failed."""

    def __init__(self, dm: torch.nn.Module):
        self.dm = dm
        self.failed = False

    def __call__(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        num_tokens: Any,
        attention_mask: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        args = (x, timesteps, context, num_tokens, attention_mask)
        if not self.failed:
            try:
                return _mirrored_forward(self.dm, *args, **kwargs)
            except (TypeError, ValueError, AttributeError) as error:
                self.failed = True
                logger.warning(
                    "dit-cache: this ComfyUI's Z-Image forward differs from the one the pack mirrors (%s); "
                    "caching is off for Z-Image, the model runs unchanged",
                    error,
                )
        return type(self.dm)._forward(self.dm, *args, **kwargs)

    def __deepcopy__(self, memo: dict) -> ReplaceableForward:
        return self  # bound to the shared diffusion model, like a method


FAMILY = Family(
    name="z_image",
    block_keys=_block_keys,
    indicator=_indicator,
    default_preset="z_image",
    object_patches={"_forward": ReplaceableForward},
)
