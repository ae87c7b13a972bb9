"""Deterministic tiny DiT models of every family, built from ComfyUI's own classes.

Real checkpoints are gigabytes; these are a few MB, run a sampling step in milliseconds on
a CPU and still go through ComfyUI's real model classes, conds and samplers, so tests of
the pack exercise exactly the code paths a user's workflow does.

- Wan and HunyuanVideo (``FILE_VARIANTS``) are written as small safetensors files and
  loaded with ``comfy.sd.load_diffusion_model`` (what ``UNETLoader`` calls), so ComfyUI's
  own model detection picks the config class.
- Flux, Qwen-Image and Z-Image cannot be detected at a tiny size (ComfyUI 0.3.75 hard-codes
  their hidden sizes), so they are built in-process from ``comfy.supported_models.<Config>``
  with tiny dimensions and wrapped the way ``load_diffusion_model_state_dict`` does.

Importing this module imports ``comfy``: put ComfyUI on ``sys.path`` and set
``comfy.cli_args.args.cpu = True`` first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.clip_vision
import comfy.ldm.flux.model
import comfy.ldm.hunyuan_video.model
import comfy.ldm.qwen_image.model
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import torch

SPLIT_LENGTHS: tuple[int, int] = (7, 5)
"""Text lengths (positive, negative) that make ComfyUI run cond and uncond as separate calls.

``_calc_cond_batch`` only batches conds whose every entry ``can_concat``. All five families
override ``extra_conds`` to wrap the text in ``CONDRegular`` (Z-Image adds ``num_tokens`` as a
``CONDConstant``), which concatenates only equal shapes, so any two different lengths split.
7 and 5 also split under the base ``CONDCrossAttn`` rule (lcm 35 / 5 = 7 > 4 padding factor),
so the pair keeps working if a family moves to that class. Equal lengths batch into one call
(cfg > 1, memory permitting; uncond first, ``cond_or_uncond == [1, 0]``); split, each step
runs the positive first. ``test_tiny_models.py`` checks both for every variant.
"""


_IMAGE_SIZE = 16  # latent side of image families: 8x8 = 64 tokens after 2x2 patches
_VIDEO_SIZE = 8  # latent side of video families: 16 tokens per latent frame


@dataclass(frozen=True)
class _Spec:
    """What one variant is: its ComfyUI config class, its tiny unet_config and its I/O shapes, the
    model classes ComfyUI must build from them, and the pack family that must patch it (None: none)."""

    config: type[comfy.supported_models_base.BASE]
    family: str | None
    classes: tuple[str, str]  # (BaseModel class, diffusion model class)
    unet_config: dict[str, Any]
    latent_channels: int
    context_dim: int
    pooled_dim: int | None = None
    frames: int | None = None  # default latent frames of a video family; None for images
    frame_axis: bool = False  # an image model that takes [B, C, 1, H, W] (Qwen-Image)
    side: int | None = None  # default latent side, when not the family default
    needs: tuple[type, str] | None = None  # (model class, field) only newer ComfyUIs declare; else left out
    member: str = ""  # how the pack must name this member of its family (logs, Cache report)
    text_padded_to: int | None = None  # the model pads every text to this many tokens (Flux.2: 512)
    preset: str = ""  # the TeaCache preset model_type=auto must pick for it


def _flux_config(guidance_embed: bool) -> dict[str, Any]:
    # The keys ComfyUI's Flux detection emits; head dim 64 = sum(axes_dim), as 128 = 16+56+56.
    return {
        "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
        "context_in_dim": 4096, "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 2,
        "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 28, 28], "theta": 10000,
        "patch_size": 2, "qkv_bias": True, "guidance_embed": guidance_embed,
    }


def _flux2_config(text_width: int) -> dict[str, Any]:
    # Flux.2's detected keys (model_detection.py) at hidden 128: one head of sum(axes_dim), modulation
    # computed once for all blocks, no pooled vector, 1x1 patches of 128 channels. The text width is
    # three hidden layers of the member's text encoder: Qwen3-4B (Klein 4B, 7680), Qwen3-8B (Klein 9B,
    # 12288), Mistral Small 3.1 (dev, 15360).
    return {
        "image_model": "flux2", "in_channels": 128, "out_channels": 128, "vec_in_dim": None,
        "context_in_dim": text_width, "hidden_size": 128, "mlp_ratio": 3.0, "num_heads": 1,
        "depth": 2, "depth_single_blocks": 2, "axes_dim": [32, 32, 32, 32], "theta": 2000,
        "patch_size": 1, "qkv_bias": False, "guidance_embed": True, "global_modulation": True,
        "mlp_silu_act": True, "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0,
    }


def _wan_config(model_type: str, in_dim: int, out_dim: int) -> dict[str, Any]:
    # Detection reads num_heads = dim // 128, so dim 128 gives one 128-wide head.
    return {
        "image_model": "wan2.1", "model_type": model_type, "dim": 128, "ffn_dim": 256,
        "num_heads": 1, "num_layers": 3, "patch_size": (1, 2, 2), "freq_dim": 256,
        "window_size": (-1, -1), "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
        "in_dim": in_dim, "out_dim": out_dim,
    }


_SPECS: dict[str, _Spec] = {
    "flux": _Spec(comfy.supported_models.Flux, "flux", ("Flux", "Flux"), _flux_config(True), 16, 4096, pooled_dim=768, member="Flux.1", preset="flux"),
    "flux_schnell": _Spec(
        comfy.supported_models.FluxSchnell, "flux", ("Flux", "Flux"), _flux_config(False), 16, 4096, pooled_dim=768, member="Flux.1", preset="flux"
    ),
    "flux2": _Spec(
        comfy.supported_models.Flux2, "flux", ("Flux2", "Flux"), _flux2_config(7680), 128, 7680, side=8,
        member="Flux.2 Klein 4B", preset="flux2", text_padded_to=512,
    ),
    "flux2_klein_9b": _Spec(
        comfy.supported_models.Flux2, "flux", ("Flux2", "Flux"), _flux2_config(12288), 128, 12288, side=8,
        member="Flux.2 Klein 9B", preset="flux2", text_padded_to=512,
    ),
    "flux2_dev": _Spec(
        comfy.supported_models.Flux2, "flux", ("Flux2", "Flux"), _flux2_config(15360), 128, 15360, side=8,
        member="Flux.2 dev", preset="flux2", text_padded_to=512,
    ),
    "wan21_t2v": _Spec(
        comfy.supported_models.WAN21_T2V, "wan", ("WAN21", "WanModel"), _wan_config("t2v", 16, 16), 16, 4096, frames=3, member="Wan T2V 1.3B", preset="wan2.1_t2v_1.3B"
    ),
    "wan21_i2v": _Spec(
        comfy.supported_models.WAN21_I2V, "wan", ("WAN21", "WanModel"), _wan_config("i2v", 36, 16), 16, 4096, frames=3, member="Wan I2V 14B", preset="wan2.1_i2v_480p_14B"
    ),
    "wan22_5b": _Spec(
        comfy.supported_models.WAN22_T2V, "wan", ("WAN22", "WanModel"), _wan_config("t2v", 48, 48), 48, 4096, frames=3, member="Wan 2.2 TI2V 5B", preset="wan2.2_ti2v_5B"
    ),
    # A Wan 2.2 14B expert pair: two ordinary Wan T2V checkpoints of one shape, whose
    # weights differ because the variant name is part of every weight's seed.
    "wan22_high": _Spec(
        comfy.supported_models.WAN21_T2V, "wan", ("WAN21", "WanModel"), _wan_config("t2v", 16, 16), 16, 4096, frames=3, member="Wan T2V 1.3B", preset="wan2.1_t2v_1.3B"
    ),
    "wan22_low": _Spec(
        comfy.supported_models.WAN21_T2V, "wan", ("WAN21", "WanModel"), _wan_config("t2v", 16, 16), 16, 4096, frames=3, member="Wan T2V 1.3B", preset="wan2.1_t2v_1.3B"
    ),
    "wan21_fun_control": _Spec(
        # Wan Fun Control (2.1 1.3B/14B, 2.2 A14B): 16 noise + 32 control channels into the patch
        # embedding, the I2V model's image projection; WAN21.concat_cond zero-fills the control when none is given.
        comfy.supported_models.WAN21_FunControl2V, "wan", ("WAN21", "WanModel"), _wan_config("i2v", 48, 16), 16,
        4096, frames=3, member="Wan Fun Control 1.3B", preset="wan2.1_t2v_1.3B"
    ),
    "hunyuan_video": _Spec(
        comfy.supported_models.HunyuanVideo, "hunyuan_video", ("HunyuanVideo", "HunyuanVideo"),
        {
            # Detection: heads = hidden // 128 with axes 16+56+56; vector_in present (else
            # HunyuanImage 2.1); guidance_in present as in HunyuanVideo T2V.
            "image_model": "hunyuan_video", "in_channels": 16, "out_channels": 16,
            "patch_size": [1, 2, 2], "vec_in_dim": 768, "axes_dim": [16, 56, 56],
            "meanflow": False, "context_in_dim": 4096, "hidden_size": 128, "mlp_ratio": 4.0,
            "num_heads": 1, "depth": 2, "depth_single_blocks": 2, "theta": 256,
            "qkv_bias": True, "byt5": False, "guidance_embed": True,
            "use_cond_type_embedding": False, "vision_in_dim": None,
        },
        16, 4096, pooled_dim=768, frames=3, member="HunyuanVideo", preset="hunyuan_video"
    ),
    "hunyuan_video_15": _Spec(
        comfy.supported_models.HunyuanVideo15, "hunyuan_video", ("HunyuanVideo15", "HunyuanVideo"),
        {
            # HunyuanVideo 1.5's detected keys at hidden 128: 32 latent channels + 32 image-condition
            # channels + 1 mask in, 1x1x1 patches, no CLIP-L vector, no guidance input, a SigLIP
            # projection (vision_in, 1152 wide: what tells ComfyUI it is 1.5) and the cond-type embedding.
            "image_model": "hunyuan_video", "in_channels": 65, "out_channels": 32,
            "patch_size": [1, 1, 1], "vec_in_dim": None, "axes_dim": [16, 56, 56],
            "meanflow": False, "context_in_dim": 3584, "hidden_size": 128, "mlp_ratio": 4.0,
            "num_heads": 1, "depth": 2, "depth_single_blocks": 2, "theta": 256,
            "qkv_bias": True, "byt5": False, "guidance_embed": False,
            "use_cond_type_embedding": True, "vision_in_dim": 1152,
        },
        32, 3584, frames=3, member="HunyuanVideo 1.5", preset="hunyuan_video_1.5"
    ),
    "hunyuan_image_21": _Spec(
        comfy.supported_models.HunyuanImage21, "hunyuan_video", ("HunyuanImage21", "HunyuanVideo"),
        {
            # HunyuanImage 2.1's detected keys at hidden 128: 64 latent channels (its 32x VAE), 2-D 1x1
            # patches with 2-D rotary axes (64 + 64), no CLIP-L vector, a guidance input, Qwen2.5-VL text.
            "image_model": "hunyuan_video", "in_channels": 64, "out_channels": 64,
            "patch_size": [1, 1], "vec_in_dim": None, "axes_dim": [64, 64],
            "meanflow": False, "context_in_dim": 3584, "hidden_size": 128, "mlp_ratio": 4.0,
            "num_heads": 1, "depth": 2, "depth_single_blocks": 2, "theta": 256,
            "qkv_bias": True, "byt5": False, "guidance_embed": True,
            "use_cond_type_embedding": False, "vision_in_dim": None,
        },
        64, 3584, member="HunyuanImage 2.1", preset="hunyuan_video",
    ),
    "qwen_image": _Spec(
        comfy.supported_models.QwenImage, "qwen_image", ("QwenImage", "QwenImageTransformer2DModel"),
        {
            "image_model": "qwen_image", "in_channels": 64, "out_channels": 16,
            "num_layers": 3, "attention_head_dim": 64, "num_attention_heads": 2,
            "joint_attention_dim": 3584, "axes_dims_rope": (8, 28, 28),
        },
        16, 3584, frame_axis=True, member="Qwen-Image", preset="qwen_image"
    ),
    "qwen_image_edit_2511": _Spec(
        # Qwen-Image-Edit 2511: Qwen-Image whose checkpoint carries __index_timestep_zero__, which
        # ComfyUI (0.33 on) turns into this unet_config entry: reference images get timestep zero.
        comfy.supported_models.QwenImage, "qwen_image", ("QwenImage", "QwenImageTransformer2DModel"),
        {
            "image_model": "qwen_image", "in_channels": 64, "out_channels": 16,
            "num_layers": 3, "attention_head_dim": 64, "num_attention_heads": 2,
            "joint_attention_dim": 3584, "axes_dims_rope": (8, 28, 28), "default_ref_method": "index_timestep_zero",
        },
        16, 3584, frame_axis=True, needs=(comfy.ldm.qwen_image.model.QwenImageTransformer2DModel, "default_ref_method"), member="Qwen-Image-Edit 2511", preset="qwen_image_edit"
    ),
    "z_image": _Spec(
        comfy.supported_models.ZImage, "z_image", ("Lumina2", "NextDiT"),
        {
            # Z-Image's detected keys at dim 256: head dim 128 == sum(axes_dims) as in the
            # real 3840-wide model; the pad tokens match checkpoints that carry cap_pad_token.
            "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256,
            "cap_feat_dim": 2560, "n_layers": 3, "n_refiner_layers": 1, "qk_norm": True,
            "n_heads": 2, "n_kv_heads": 2, "axes_dims": [32, 48, 48],
            "axes_lens": [1536, 512, 512], "rope_theta": 256.0, "ffn_dim_multiplier": 8.0 / 3.0,
            "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32,
        },
        16, 2560, member="Z-Image", preset="z_image"
    ),
    "lumina2": _Spec(
        comfy.supported_models.Lumina2, None, ("Lumina2", "NextDiT"),
        {
            # Lumina 2's detected keys at dim 192: grouped-query attention (2 heads share
            # 1 kv head, as 24 share 8), head dim 96 == sum(axes_dims); Gemma 2 2B width.
            "image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 192,
            "cap_feat_dim": 2304, "n_layers": 2, "n_refiner_layers": 1, "qk_norm": True,
            "n_heads": 2, "n_kv_heads": 1, "axes_dims": [32, 32, 32],
            "axes_lens": [300, 512, 512], "rope_theta": 10000.0, "ffn_dim_multiplier": 4.0,
        },
        16, 2304,
    ),
}


def _declared_fields(diffusion_class: type) -> set[str]:
    """The constructor fields the installed ComfyUI's model class takes (its ``<Class>Params``, if any)."""
    params = getattr(sys.modules[diffusion_class.__module__], f"{diffusion_class.__name__}Params", None)
    if dataclasses.is_dataclass(params):
        return {f.name for f in dataclasses.fields(params)}
    return set(inspect.signature(diffusion_class).parameters)


def _buildable(spec: _Spec) -> bool:
    return spec.needs is None or spec.needs[1] in _declared_fields(spec.needs[0])


VARIANTS: tuple[str, ...] = tuple(v for v, spec in _SPECS.items() if spec.family and _buildable(spec))
"""Every tiny model of a family the pack patches that this ComfyUI can build (each built through that
member's own ComfyUI config): the family-wide suites run each of them."""

EXTRA_VARIANTS: tuple[str, ...] = tuple(v for v, spec in _SPECS.items() if spec.family is None)
"""Models of families the pack does not patch (Lumina 2: a NextDiT without Z-Image's
modulation), for pass-through tests; not part of ``VARIANTS``."""

FILE_VARIANTS: tuple[str, ...] = tuple(v for v in VARIANTS if _SPECS[v].family in ("wan", "hunyuan_video"))
"""The variants ComfyUI can detect at a tiny size: written as files and loaded as a user's would be."""

ONE_PER_FAMILY: tuple[str, ...] = tuple(
    v for i, v in enumerate(VARIANTS) if _SPECS[v].family not in {_SPECS[u].family for u in VARIANTS[:i]}
)
"""The first variant of each family in ``VARIANTS``, for tests that need one model per family."""


def family(variant: str) -> str | None:
    """The pack family that must patch this variant (None: it must pass through)."""
    return _spec(variant).family


def split_lengths(variant: str) -> tuple[int, int]:
    """Text lengths that make ComfyUI run this variant's cond and uncond as separate calls: ``SPLIT_LENGTHS``,
    or for a model that pads every text (Flux.2), a positive text longer than the padding."""
    padded = _spec(variant).text_padded_to
    return SPLIT_LENGTHS if padded is None else (padded + 1, SPLIT_LENGTHS[1])


def named(variant: str) -> tuple[str, str]:
    """(member, TeaCache preset): how the pack must name this variant and the preset auto must pick."""
    spec = _spec(variant)
    return spec.member, spec.preset


def expected_classes(variant: str) -> tuple[str, str, str]:
    """(model config, BaseModel, diffusion model) class names ComfyUI must build for this variant."""
    spec = _spec(variant)
    return (spec.config.__name__, *spec.classes)


def _spec(variant: str) -> _Spec:
    if variant not in _SPECS:
        known = VARIANTS + EXTRA_VARIANTS
        raise ValueError(f"unknown tiny model variant {variant!r}; pick one of {known}")
    return _SPECS[variant]


def _generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by a stable hash, so every process draws the same numbers."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


# Query/key RMSNorms of every family. Random weights give near-uniform attention, so text
# barely moves joint-attention models (Qwen-Image, Z-Image); a scale of 2 (logit std ~4,
# closer to trained models) makes the prompt, and so CFG, change their output clearly.
_QK_NORMS = frozenset(
    {"query_norm", "key_norm", "norm_q", "norm_k", "norm_k_img", "norm_added_q", "norm_added_k",
     "q_norm", "k_norm"}
)
_QK_NORM_SCALE = 2.0
_MATRIX_MODULES = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.Embedding)


@torch.no_grad()
def _fill_weights(module: torch.nn.Module, variant: str, seed: int) -> None:
    """Fill every parameter of ``module`` from (variant, seed, parameter name).

    Norm weights are ones (QK norms ``_QK_NORM_SCALE``) and norm biases zeros; linear, conv
    and embedding weights are normal with std 1/sqrt(fan_in), so activations keep unit
    scale through the blocks and every modulation / gate layer is non-zero (some DiTs
    zero-init them, which would make blocks identity); the rest (biases, Wan modulation
    tables, Z-Image pad tokens) is normal with std 0.02.
    """
    for module_name, m in module.named_modules():
        is_norm = "Norm" in type(m).__name__
        for param_name, param in m.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            if is_norm and param_name == "bias":
                param.zero_()
            elif is_norm:
                param.fill_(_QK_NORM_SCALE if module_name.rsplit(".", 1)[-1] in _QK_NORMS else 1.0)
            else:
                is_matrix = isinstance(m, _MATRIX_MODULES) and param_name == "weight"
                std = param[0].numel() ** -0.5 if is_matrix else 0.02
                values = torch.randn(param.shape, generator=_generator(variant, seed, name))
                param.copy_(values * std)


# Fields that only some ComfyUI versions declare (0.33 requires them, 0.3.75 rejects them), per
# image_model, with the value ComfyUI's own detection (model_detection.py) gives these models.
_VERSION_FIELDS: dict[str, tuple[type, dict[str, Any]]] = {
    "flux": (comfy.ldm.flux.model.Flux, {"txt_ids_dims": []}),  # Flux.1: no text position ids
    "flux2": (comfy.ldm.flux.model.Flux, {"txt_ids_dims": [3]}),  # Flux.2: text positions on the 4th axis
    "hunyuan_video": (comfy.ldm.hunyuan_video.model.HunyuanVideo, {"meanflow_sum": False}),  # no vision_in
}


def host_unet_config(config: dict[str, Any]) -> dict[str, Any]:
    """A tiny unet_config completed with the fields the installed ComfyUI version declares."""
    diffusion_class, fields = _VERSION_FIELDS.get(config.get("image_model"), (None, {}))
    if not fields:
        return dict(config)
    declared = _declared_fields(diffusion_class)
    return {**config, **{k: v for k, v in fields.items() if k in declared and k not in config}}


def unet_config(variant: str) -> dict[str, Any]:
    """``variant``'s tiny unet_config, as the installed ComfyUI version takes it."""
    return host_unet_config(_spec(variant).unet_config)


def _build(variant: str, seed: int) -> comfy.model_base.BaseModel:
    """Create the ComfyUI BaseModel of ``variant`` in fp32 on the CPU, weights filled."""
    spec = _spec(variant)
    model_config = spec.config(unet_config(variant))
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "")
    _fill_weights(model.diffusion_model, variant, seed)
    return model


def write_checkpoint(variant: str, path: str | os.PathLike[str], *, seed: int = 0) -> None:
    """Write ``variant``'s diffusion-model state dict as safetensors (every tensor filled).

    Only Wan and HunyuanVideo variants: ComfyUI detects those from a tiny file.
    """
    if variant not in FILE_VARIANTS:
        raise ValueError(
            f"{variant!r} cannot be detected from a tiny file; use load_model() for it "
            f"(file variants: {FILE_VARIANTS})"
        )
    state_dict = _build(variant, seed).diffusion_model.state_dict()
    path = Path(path)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    comfy.utils.save_torch_file({k: v.contiguous() for k, v in state_dict.items()}, str(partial))
    os.replace(partial, path)  # atomic, so parallel test workers never read half a file


def load_model(
    variant: str, cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0
) -> comfy.model_patcher.ModelPatcher:
    """Return ``variant`` as a MODEL (ModelPatcher), the way ComfyUI's loaders return it.

    File variants are written to ``cache_dir`` (reused when present; a throw-away temp dir
    when None) and loaded by ``comfy.sd.load_diffusion_model`` so detection is exercised.
    """
    if variant in FILE_VARIANTS:
        if cache_dir is None:
            with tempfile.TemporaryDirectory() as tmp:
                return load_model(variant, tmp, seed=seed)
        path = Path(cache_dir) / f"tiny-{variant}-seed{seed}.safetensors"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_checkpoint(variant, path, seed=seed)
        return comfy.sd.load_diffusion_model(str(path))

    model = _build(variant, seed).to(comfy.model_management.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def latent(
    variant: str,
    batch: int = 1,
    seed: int = 0,
    *,
    size: int | None = None,
    frames: int | None = None,
) -> dict[str, torch.Tensor]:
    """A LATENT dict of the shape the family's model takes, random but fixed by ``seed``.

    Random rather than zero so ``denoise < 1`` starts from an image; at full denoise flow
    models ignore it. ``size`` is the latent height = width (default 16 for images, 8 for
    video, 8 for Flux.2), ``frames`` the latent frame count of video families (default 3).
    Qwen-Image is 5-D ``[B, 16, 1, H, W]``: EmptySD3LatentImage gives 4-D and the KSampler
    node's ``fix_empty_latent_channels`` adds the frame axis, which ``comfy.sample.sample``
    itself does not do.
    """
    spec = _spec(variant)
    shape = [batch, spec.latent_channels]
    if spec.frames is not None:
        shape.append(spec.frames if frames is None else frames)
    elif frames is not None:
        raise ValueError(f"{variant!r} is an image model; frames only applies to video variants")
    elif spec.frame_axis:
        shape.append(1)
    default_side = spec.side or (_VIDEO_SIZE if spec.frames is not None else _IMAGE_SIZE)
    side = size if size is not None else default_side
    shape += [side, side]
    return {"samples": torch.randn(shape, generator=_generator(variant, "latent", seed))}


def reference_latent(variant: str, seed: int = 7) -> torch.Tensor:
    """An encoded reference image for edit models: a quarter of the default latent (16 tokens at 2x2 patches)."""
    spec = _spec(variant)
    side = (spec.side or (_VIDEO_SIZE if spec.frames is not None else _IMAGE_SIZE)) // 2
    return latent(variant, seed=seed, size=side)["samples"]


def conditioning(
    variant: str, seed: int = 0, length: int = 8, batch: int = 1
) -> list[list[Any]]:
    """A CONDITIONING ``[[text, extras]]`` of the width the family's text encoder gives.

    Flux and HunyuanVideo also get ``pooled_output`` (CLIP-L, 768); their guidance comes
    from ComfyUI's defaults (3.5 / 6.0). ``wan21_i2v`` gets a ``clip_vision_output`` (257
    CLIP-H tokens of 1280) so its image cross-attention sees image tokens, and a start image's
    latent with its mask on the 20 extra input channels. ``wan21_fun_control`` gets a control
    video latent.
    """
    spec = _spec(variant)
    g = _generator(variant, "conditioning", seed)
    text = torch.randn(batch, length, spec.context_dim, generator=g)
    # As CLIPTextEncode gives it: a pooled_output entry always, None where the text encoder has none.
    extras: dict[str, Any] = {"pooled_output": None}
    if spec.pooled_dim is not None:
        extras["pooled_output"] = torch.randn(batch, spec.pooled_dim, generator=g)
    if variant == "wan21_i2v":
        # The same image for every seed: WanImageToVideo gives both branches one image.
        clip_vision = comfy.clip_vision.Output()
        clip_vision["penultimate_hidden_states"] = torch.randn(
            batch, 257, 1280, generator=_generator(variant, "clip_vision")
        )
        extras["clip_vision_output"] = clip_vision
        # And the start image's latent with WanImageToVideo's mask (0 on the given first frame, 1 to
        # generate): the inputs an I2V, first-last-frame or Fun Inpaint model concatenates to the noise.
        shape = (batch, 16, spec.frames, _VIDEO_SIZE, _VIDEO_SIZE)
        extras["concat_latent_image"] = torch.randn(shape, generator=_generator(variant, "start_image"))
        mask = torch.ones(1, 1, spec.frames, _VIDEO_SIZE, _VIDEO_SIZE)
        mask[:, :, 0] = 0.0
        extras["concat_mask"] = mask
    if variant == "wan21_fun_control":
        # As WanFunControlToVideo gives both branches: the control video's latent (and a start image's,
        # zero here) on the 32 channels beside the noise.
        control = torch.randn(batch, 16, spec.frames, _VIDEO_SIZE, _VIDEO_SIZE, generator=_generator(variant, "control"))
        extras["concat_latent_image"] = torch.cat([control, torch.zeros_like(control)], dim=1)
    return [[text, extras]]
