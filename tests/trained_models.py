"""Small trained Flux and Wan models: fixtures whose step-to-step behaviour resembles real models.

Random-weight models change their output far more from step to step than trained ones, so
caching thresholds tuned on real models never skip on them and fidelity figures would
mislead. These models are ComfyUI's own classes (``comfy.ldm.flux.model.Flux``,
``comfy.ldm.wan.model.WanModel``) at small sizes (Flux at 2 + 4 blocks, and at 4 + 8 as
``flux_deep`` for many probe blocks and long cached streaks), trained by ``bench/train_fixtures.py``
with rectified flow on procedurally drawn data: soft coloured shapes on a tinted
background in ComfyUI's 16-channel latent space (moving across the frames for Wan), one
shape and colour per class, the class given as a few text tokens and a pooled vector.
Their weights are committed as fp16 safetensors in ``bench/fixtures/`` (loaded as fp32).

    model = load_model("flux")                       # a ComfyUI MODEL (ModelPatcher)
    positive = conditioning("flux", class_index=3)   # CONDITIONING for class 3
    negative = conditioning("flux", class_index=None)  # the empty prompt (CFG's uncond)
    lat = empty_latent("flux")                       # LATENT of the trained shape

``sample_data`` draws training data (in the model's internal latent space, i.e. after
``process_latent_in``), so a test can compare a sampled output with what a class looks like.

Importing this module imports ``comfy``: put ComfyUI on ``sys.path`` and set
``comfy.cli_args.args.cpu = True`` first.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import torch
from tiny_models import host_unet_config

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "bench" / "fixtures"
CLASSES = 8
TEXT_TOKENS = 4
COND_DIM = 64  # width of the class tokens and of Flux's pooled vector
CHANNELS = 16


@dataclass(frozen=True)
class FixtureSpec:
    """One trained fixture: ComfyUI config class, its unet_config and the latent shape it was trained on."""

    config: type[comfy.supported_models_base.BASE]
    unet_config: dict[str, Any]
    side: int  # latent height = width
    frames: int | None  # latent frames of a video model; None for images

    @property
    def latent_shape(self) -> tuple[int, ...]:
        frames = () if self.frames is None else (self.frames,)
        return (CHANNELS, *frames, self.side, self.side)


_FLUX = {
    "image_model": "flux", "in_channels": CHANNELS, "out_channels": CHANNELS, "vec_in_dim": COND_DIM,
    "context_in_dim": COND_DIM, "hidden_size": 128, "mlp_ratio": 4.0, "num_heads": 2, "depth": 2,
    "depth_single_blocks": 4, "axes_dim": [8, 28, 28], "theta": 10000, "patch_size": 2,
    "qkv_bias": True, "guidance_embed": True,
}
SPECS: dict[str, FixtureSpec] = {
    "flux": FixtureSpec(comfy.supported_models.Flux, _FLUX, side=16, frames=None),
    # Deep enough for many probe blocks (F4-F8) and long cached streaks: 4 double + 8 single blocks.
    "flux_deep": FixtureSpec(
        comfy.supported_models.Flux, _FLUX | {"depth": 4, "depth_single_blocks": 8}, side=16, frames=None
    ),
    "wan": FixtureSpec(
        comfy.supported_models.WAN21_T2V,
        {
            "image_model": "wan2.1", "model_type": "t2v", "dim": 128, "ffn_dim": 512, "num_heads": 2,
            "num_layers": 6, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1),
            "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6, "in_dim": CHANNELS, "out_dim": CHANNELS,
            "text_dim": COND_DIM,
        },
        side=12, frames=3,
    ),
}
FIXTURES: tuple[str, ...] = tuple(SPECS)


def is_flux(name: str) -> bool:
    """Flux fixtures take a pooled vector and embedded guidance; Wan's take neither."""
    return SPECS[name].config is comfy.supported_models.Flux


def _generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by a stable hash, so every process draws the same numbers."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def weights_path(name: str) -> Path:
    return FIXTURE_DIR / f"trained-{name}.safetensors"


def build(spec: str | FixtureSpec) -> comfy.model_base.BaseModel:
    """The ComfyUI BaseModel of a fixture (by name, or any spec) in fp32 on the CPU, weights not filled."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    model_config = spec.config(host_unet_config(spec.unet_config))
    model_config.set_inference_dtype(torch.float32, None)
    return model_config.get_model({}, "")


def _current_name(key: str, expected: Any) -> str:
    if key not in expected and key.endswith("_norm.scale"):
        return key.removesuffix("scale") + "weight"
    return key


def load_model(name: str) -> comfy.model_patcher.ModelPatcher:
    """Fixture ``name`` (one of FIXTURES) with its trained weights, as a MODEL the way ComfyUI's loaders return it."""
    model = build(name)
    state_dict = comfy.utils.load_torch_file(str(weights_path(name)))
    expected = model.diffusion_model.state_dict().keys()
    # Saved with ComfyUI 0.3.75's names; 0.33 calls the q/k RMSNorm's parameter `weight`, not `scale`.
    renamed = {_current_name(k, expected): v.float() for k, v in state_dict.items()}
    model.diffusion_model.load_state_dict(renamed, strict=True)
    return patcher(model)


def patcher(model: comfy.model_base.BaseModel) -> comfy.model_patcher.ModelPatcher:
    """``model`` as a MODEL (ModelPatcher) on ComfyUI's devices, as ``load_diffusion_model_state_dict`` wraps it."""
    model = model.to(comfy.model_management.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(
        model,
        load_device=comfy.model_management.get_torch_device(),
        offload_device=comfy.model_management.unet_offload_device(),
    )


def class_tokens(class_index: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(text tokens [TEXT_TOKENS, COND_DIM], pooled [COND_DIM]) of a class; None is the empty prompt (zeros)."""
    if class_index is None:
        return torch.zeros(TEXT_TOKENS, COND_DIM), torch.zeros(COND_DIM)
    g = _generator("class-tokens", class_index)
    return torch.randn(TEXT_TOKENS, COND_DIM, generator=g), torch.randn(COND_DIM, generator=g)


def conditioning(name: str, class_index: int | None, batch: int = 1) -> list[list[Any]]:
    """CONDITIONING for ``class_index`` (0..CLASSES-1, or None for the empty prompt) as the fixture was trained."""
    tokens, pooled = class_tokens(class_index)
    extras: dict[str, Any] = {}
    if is_flux(name):
        extras["pooled_output"] = pooled.expand(batch, -1).clone()  # guidance: ComfyUI's default 3.5, as trained
    return [[tokens.expand(batch, -1, -1).clone(), extras]]


def empty_latent(spec: str | FixtureSpec, batch: int = 1) -> dict[str, torch.Tensor]:
    """An empty LATENT of the trained shape (Flux [B,16,16,16], Wan [B,16,3,12,12]) or of ``spec``'s."""
    spec = SPECS[spec] if isinstance(spec, str) else spec
    return {"samples": torch.zeros(batch, *spec.latent_shape)}


def class_colours() -> torch.Tensor:
    """[CLASSES, CHANNELS] shape colour of each class (unit-free latent values, norm about 2.5)."""
    colours = torch.randn(CLASSES, CHANNELS, generator=_generator("colours"))
    return 2.5 * colours / colours.norm(dim=1, keepdim=True)


def background_colours() -> torch.Tensor:
    """[CLASSES, CHANNELS] faint background tint of each class."""
    colours = torch.randn(CLASSES, CHANNELS, generator=_generator("backgrounds"))
    return 0.6 * colours / colours.norm(dim=1, keepdim=True)


def _shape_mask(kind: int, dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Soft mask (0..1) of shape ``kind`` at offsets dx, dy (in latent pixels) of size ``radius``."""
    edge = 0.6
    if kind == 0:  # disc
        distance = torch.sqrt(dx**2 + dy**2) - radius
    elif kind == 1:  # square
        distance = torch.maximum(dx.abs(), dy.abs()) - radius
    elif kind == 2:  # ring
        distance = (torch.sqrt(dx**2 + dy**2) - radius).abs() - radius * 0.35
    else:  # diamond
        distance = (dx.abs() + dy.abs()) - radius * 1.3
    return torch.sigmoid(-distance / edge)


def sample_data(name: str, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training data for ``classes`` [B]: [B, 16, (frames,) side, side] in the model's internal latent space.

    A soft shape of the class's kind (class % 4) and colour on its background tint, at a random
    position and size; in video the shape moves in a straight line across the frames.
    """
    spec = SPECS[name]
    frames = spec.frames or 1
    batch = classes.shape[0]
    side = spec.side
    centre = (torch.rand(batch, 2, generator=generator) * 0.5 + 0.25) * side
    velocity = (torch.rand(batch, 2, generator=generator) - 0.5) * side * 0.25
    radius = (torch.rand(batch, generator=generator) * 0.15 + 0.15) * side
    grid = torch.arange(side, dtype=torch.float32) + 0.5
    out = torch.empty(batch, CHANNELS, frames, side, side)
    colours, backgrounds = class_colours(), background_colours()
    for b in range(batch):
        k = int(classes[b])
        for f in range(frames):
            cx, cy = centre[b] + velocity[b] * (f - (frames - 1) / 2)
            mask = _shape_mask(k % 4, grid[None, :] - cx, grid[:, None] - cy, radius[b])
            out[b, :, f] = backgrounds[k][:, None, None] + mask * colours[k][:, None, None]
    return out if spec.frames is not None else out[:, :, 0]


PICTURE_SCALE = 8  # screen pixels per latent pixel


def picture(samples: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """A fixture's LATENT samples [B, 16, (frames,) H, W] drawn as an IMAGE [B, H*8, frames*W*8, 3] in 0..1.

    The 16 channels are projected on the three directions that tell the class colours apart
    most (their principal axes), so each class's shape shows in its own colour; video frames
    sit side by side. The colour range is the reference's (the uncached result) when given, so
    pictures of several methods compare one to one, else the picture's own.
    """
    rgb = _colour_axes(samples)
    scale_from = rgb if reference is None else _colour_axes(reference)
    low, high = scale_from.amin(), scale_from.amax()
    rgb = ((rgb - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    rgb = torch.cat(list(rgb.unbind(1)), dim=2)  # frames side by side: [B, H, frames*W, 3]
    return rgb.repeat_interleave(PICTURE_SCALE, 1).repeat_interleave(PICTURE_SCALE, 2)


def _colour_axes(samples: torch.Tensor) -> torch.Tensor:
    """[B, frames, H, W, 3]: the samples on the class colours' three principal axes."""
    axes = torch.linalg.svd(class_colours(), full_matrices=False).Vh[:3]  # [3, CHANNELS]
    frames = samples if samples.ndim == 5 else samples.unsqueeze(2)
    return torch.einsum("kc,bcfhw->bfhwk", axes, frames.float())
