"""The tiny model fixtures, checked in the real ComfyUI: they are only worth something if
ComfyUI treats them as the family they stand for and they sample deterministically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

COMFYUI_PATH = os.environ.get(
    "COMFYUI_PATH", str(Path(__file__).resolve().parents[1] / ".host" / "ComfyUI")
)
sys.path.insert(0, COMFYUI_PATH)

import comfy.cli_args

comfy.cli_args.args.cpu = True

import comfy.model_detection
import comfy.model_patcher
import comfy.patcher_extension
import comfy.sample
import pytest
import safetensors.torch
import tiny_models
import torch
from tiny_models import EXTRA_VARIANTS, VARIANTS

ALL_VARIANTS = VARIANTS + EXTRA_VARIANTS

# variant -> (default latent shape, text width, pooled width or None).
EXPECTED_SHAPES: dict[str, tuple[tuple[int, ...], int, int | None]] = {
    "flux": ((1, 16, 16, 16), 4096, 768),
    "flux_schnell": ((1, 16, 16, 16), 4096, 768),
    "wan21_t2v": ((1, 16, 3, 8, 8), 4096, None),
    "wan21_i2v": ((1, 16, 3, 8, 8), 4096, None),
    "wan22_5b": ((1, 48, 3, 8, 8), 4096, None),
    "wan22_high": ((1, 16, 3, 8, 8), 4096, None),
    "wan22_low": ((1, 16, 3, 8, 8), 4096, None),
    "hunyuan_video": ((1, 16, 3, 8, 8), 4096, 768),
    "qwen_image": ((1, 16, 1, 16, 16), 3584, None),
    "qwen_image_edit_2511": ((1, 16, 1, 16, 16), 3584, None),
    "flux2": ((1, 128, 8, 8), 7680, None),
    "flux2_klein_9b": ((1, 128, 8, 8), 12288, None),
    "flux2_dev": ((1, 128, 8, 8), 15360, None),
    "wan21_fun_control": ((1, 16, 3, 8, 8), 4096, None),
    "hunyuan_video_15": ((1, 32, 3, 8, 8), 3584, None),
    "hunyuan_image_21": ((1, 64, 16, 16), 3584, None),
    "z_image": ((1, 16, 16, 16), 2560, None),
    "lumina2": ((1, 16, 16, 16), 2304, None),
}

# diffusion_model class -> its transformer block lists.
BLOCK_LISTS: dict[str, tuple[str, ...]] = {
    "Flux": ("double_blocks", "single_blocks"),
    "HunyuanVideo": ("double_blocks", "single_blocks"),
    "WanModel": ("blocks",),
    "QwenImageTransformer2DModel": ("transformer_blocks",),
    "NextDiT": ("context_refiner", "noise_refiner", "layers"),
}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where file variants are written once per session."""
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def model(cache_dir: Path) -> Callable[[str], comfy.model_patcher.ModelPatcher]:
    """One loaded model per variant for the session; tests clone before patching it."""
    loaded: dict[str, comfy.model_patcher.ModelPatcher] = {}

    def get(variant: str) -> comfy.model_patcher.ModelPatcher:
        if variant not in loaded:
            loaded[variant] = tiny_models.load_model(variant, cache_dir)
        return loaded[variant]

    return get


def _sample(
    patcher: comfy.model_patcher.ModelPatcher,
    variant: str,
    cfg: float,
    *,
    steps: int = 4,
    lengths: tuple[int, int] | None = None,
    noise_seed: int = 42,
    noise_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample as the KSampler node does (euler / simple); return (noise, samples). Texts of different
    lengths by default, so that cond and uncond run as separate calls."""
    lengths = lengths or tiny_models.split_lengths(variant)
    latent_image = tiny_models.latent(variant)["samples"]
    noise = comfy.sample.prepare_noise(latent_image, noise_seed)
    positive = tiny_models.conditioning(variant, seed=0, length=lengths[0])
    negative = tiny_models.conditioning(variant, seed=1, length=lengths[1])
    samples = comfy.sample.sample(
        patcher, noise, steps, cfg, "euler", "simple", positive, negative, latent_image,
        noise_mask=noise_mask, disable_pbar=True, seed=noise_seed,
    )
    return noise, samples


def _digest(patcher: comfy.model_patcher.ModelPatcher) -> str:
    """sha256 over every diffusion-model tensor, by name."""
    h = hashlib.sha256()
    for name, tensor in sorted(patcher.model.diffusion_model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _record_calls(
    patcher: comfy.model_patcher.ModelPatcher, calls: list[dict[str, tuple[int, ...]]]
) -> comfy.model_patcher.ModelPatcher:
    """A clone that records, per model call, ``cond_or_uncond`` and the timestep shape that
    reaches the diffusion model (after BaseModel.process_timestep)."""

    def apply_model(executor: Any, *args: Any, **kwargs: Any) -> Any:
        transformer_options = args[5]  # (x, t, c_concat, c_crossattn, control, options)
        calls.append({"cond_or_uncond": tuple(transformer_options["cond_or_uncond"])})
        return executor(*args, **kwargs)

    def diffusion_model(executor: Any, x: Any, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        calls[-1]["timestep"] = tuple(timestep.shape)
        return executor(x, timestep, *args, **kwargs)

    clone = patcher.clone()
    wrappers = comfy.patcher_extension.WrappersMP
    clone.add_wrapper_with_key(wrappers.APPLY_MODEL, "test", apply_model)
    clone.add_wrapper_with_key(wrappers.DIFFUSION_MODEL, "test", diffusion_model)
    return clone


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_comfyui_picks_the_family_classes(
    variant: str, model: Callable[[str], comfy.model_patcher.ModelPatcher]
) -> None:
    patcher = model(variant)
    base = patcher.model
    dm = base.diffusion_model
    found = (type(base.model_config).__name__, type(base).__name__, type(dm).__name__)
    assert found == tiny_models.expected_classes(variant)
    assert base.get_dtype() == torch.float32
    unet_config = base.model_config.unet_config
    if variant not in tiny_models.FILE_VARIANTS and variant != "z_image":
        # Built in-process: ComfyUI's own config matching must agree with the class we chose
        # (ZImage's matching also requires dim 3840, so Z-Image is only checked by class).
        matched = comfy.model_detection.model_config_from_unet_config(unet_config)
        assert type(matched) is type(base.model_config)
    if variant.startswith("flux"):
        assert dm.params.guidance_embed is (variant != "flux_schnell")
    if variant.startswith("flux2"):
        assert (unet_config["context_in_dim"], dm.params.global_modulation) == (EXPECTED_SHAPES[variant][1], True)
    if variant == "wan21_fun_control":
        assert (dm.model_type, dm.in_dim) == ("i2v", 48)
    if variant == "hunyuan_video_15":
        assert dm.vector_in is None and unet_config["vision_in_dim"] == 1152
    if variant == "qwen_image_edit_2511":
        assert dm.default_ref_method == "index_timestep_zero"
    if variant == "wan21_i2v":
        assert (dm.model_type, dm.in_dim, dm.img_emb is not None) == ("i2v", 36, True)
    if variant == "wan22_5b":
        assert (dm.in_dim, dm.out_dim) == (48, 48)
    if variant == "hunyuan_video":
        assert dm.vector_in is not None and unet_config["vec_in_dim"] == 768
    if variant in ("z_image", "lumina2"):
        assert unet_config.get("z_image_modulation", False) is (variant == "z_image")


@pytest.mark.parametrize("variant", tiny_models.FILE_VARIANTS)
def test_checkpoint_fills_every_tensor_the_model_loads(
    variant: str, tmp_path: Path, model: Callable[[str], comfy.model_patcher.ModelPatcher]
) -> None:
    path = tmp_path / "model.safetensors"
    tiny_models.write_checkpoint(variant, path)
    written = safetensors.torch.load_file(str(path))
    loaded = model(variant).model.diffusion_model.state_dict()
    assert written.keys() == loaded.keys()  # nothing left as uninitialised memory
    for name, tensor in written.items():
        assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, loaded[name]), name


def test_write_checkpoint_rejects_in_process_variants(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="load_model"):
        tiny_models.write_checkpoint("flux", tmp_path / "flux.safetensors")


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_weights_are_deterministic(
    variant: str, tmp_path: Path, model: Callable[[str], comfy.model_patcher.ModelPatcher]
) -> None:
    # No cache dir: file variants are written to a temp dir and detected a second time.
    again = tiny_models.load_model(variant)
    assert _digest(again) == _digest(model(variant))
    assert _digest(tiny_models.load_model(variant, tmp_path, seed=1)) != _digest(again)


def test_wan22_experts_share_a_shape_but_not_weights(
    model: Callable[[str], comfy.model_patcher.ModelPatcher],
) -> None:
    high = model("wan22_high").model.diffusion_model.state_dict()
    low = model("wan22_low").model.diffusion_model.state_dict()
    assert {k: v.shape for k, v in high.items()} == {k: v.shape for k, v in low.items()}
    assert not torch.equal(high["blocks.0.self_attn.q.weight"], low["blocks.0.self_attn.q.weight"])


def test_weights_are_identical_in_another_process(
    tmp_path: Path, model: Callable[[str], comfy.model_patcher.ModelPatcher]
) -> None:
    # The same digest as _digest(), computed in a fresh interpreter.
    script = f"""
import hashlib, json, sys
sys.path[:0] = [{COMFYUI_PATH!r}, {str(Path(__file__).parent)!r}]
import comfy.cli_args
comfy.cli_args.args.cpu = True
import tiny_models
digests = {{}}
for variant in tiny_models.VARIANTS + tiny_models.EXTRA_VARIANTS:
    h = hashlib.sha256()
    state = tiny_models.load_model(variant, {str(tmp_path)!r}).model.diffusion_model.state_dict()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digests[variant] = h.hexdigest()
print(json.dumps(digests))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    digests = json.loads(result.stdout.strip().splitlines()[-1])
    assert digests == {variant: _digest(model(variant)) for variant in ALL_VARIANTS}


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_latent_and_conditioning_shapes(variant: str) -> None:
    latent_shape, text_width, pooled_width = EXPECTED_SHAPES[variant]
    assert tuple(tiny_models.latent(variant)["samples"].shape) == latent_shape
    resized = tiny_models.latent(variant, batch=2, size=12)["samples"]
    assert tuple(resized.shape) == (2, *latent_shape[1:-2], 12, 12)
    assert torch.equal(tiny_models.latent(variant, seed=3)["samples"],
                       tiny_models.latent(variant, seed=3)["samples"])

    [[text, extras]] = tiny_models.conditioning(variant, seed=0, length=7, batch=2)
    assert tuple(text.shape) == (2, 7, text_width)
    assert torch.equal(text, tiny_models.conditioning(variant, seed=0, length=7, batch=2)[0][0])
    assert not torch.equal(text, tiny_models.conditioning(variant, seed=1, length=7, batch=2)[0][0])
    pooled = extras.get("pooled_output")
    assert (None if pooled is None else tuple(pooled.shape)) == (
        None if pooled_width is None else (2, pooled_width)
    )
    if variant == "wan21_i2v":
        assert tuple(extras["clip_vision_output"].penultimate_hidden_states.shape) == (2, 257, 1280)
        assert tuple(extras["concat_latent_image"].shape) == (2, 16, 3, 8, 8)
    if variant == "wan21_fun_control":
        assert tuple(extras["concat_latent_image"].shape) == (2, 32, 3, 8, 8)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_sampling_is_finite_input_dependent_and_repeatable(
    variant: str, cfg: float, model: Callable[[str], comfy.model_patcher.ModelPatcher]
) -> None:
    patcher = model(variant)
    noise, samples = _sample(patcher, variant, cfg)
    assert samples.shape == noise.shape
    assert torch.isfinite(samples).all()
    assert 0.1 < samples.std().item() < 20.0
    assert (samples - noise).abs().mean() > 0.1
    assert torch.equal(_sample(patcher, variant, cfg)[1], samples)
    assert not torch.equal(_sample(patcher, variant, cfg, noise_seed=43)[1], samples)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_cfg_changes_the_result(
    variant: str, model: Callable[[str], comfy.model_patcher.ModelPatcher]
) -> None:
    # cond and uncond differ enough that mixing up CFG branches would show.
    _, plain = _sample(model(variant), variant, 1.0)
    _, guided = _sample(model(variant), variant, 3.0)
    assert (guided - plain).abs().mean() > 0.02 * plain.abs().mean()


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_split_lengths_run_cond_and_uncond_separately(
    variant: str, model: Callable[[str], comfy.model_patcher.ModelPatcher]
) -> None:
    calls: list[dict[str, tuple[int, ...]]] = []
    patcher = _record_calls(model(variant), calls)
    _sample(patcher, variant, 3.0, steps=2)
    assert [call["cond_or_uncond"] for call in calls] == [(0,), (1,), (0,), (1,)]
    calls.clear()
    _sample(patcher, variant, 3.0, steps=2, lengths=(8, 8))
    assert [call["cond_or_uncond"] for call in calls] == [(1, 0), (1, 0)]


def test_wan22_5b_gets_per_frame_timesteps_with_a_noise_mask(
    model: Callable[[str], comfy.model_patcher.ModelPatcher],
) -> None:
    calls: list[dict[str, tuple[int, ...]]] = []
    patcher = _record_calls(model("wan22_5b"), calls)
    frames = tiny_models.latent("wan22_5b")["samples"].shape[2]
    mask = torch.ones(1, 1, frames, 8, 8)
    mask[:, :, 0] = 0.0  # the first frame is a given image, as Wan22ImageToVideoLatent sets it
    _sample(patcher, "wan22_5b", 1.0, steps=1, noise_mask=mask)
    _sample(patcher, "wan22_5b", 1.0, steps=1)
    assert [call["timestep"] for call in calls] == [(1, frames), (1,)]


@contextlib.contextmanager
def _block_changes(dm: torch.nn.Module) -> Iterator[dict[str, list[float]]]:
    """Record, per block, |out - in| / |in| of the image stream for every call."""
    changes: dict[str, list[float]] = {}
    handles = []
    for list_name in BLOCK_LISTS[type(dm).__name__]:
        for index, block in enumerate(getattr(dm, list_name)):
            key = f"{list_name}.{index}"
            inputs: list[torch.Tensor] = []

            def before(
                _m: torch.nn.Module, args: tuple, kwargs: dict, inputs: list = inputs
            ) -> None:
                x = kwargs.get("img", kwargs.get("hidden_states", args[0] if args else None))
                inputs.append(x.detach().clone())  # Flux blocks modify their input in place

            def after(
                _m: torch.nn.Module, _args: tuple, _kwargs: dict, out: Any,
                key: str = key, inputs: list = inputs,
            ) -> None:
                x = inputs.pop()
                outs = out if isinstance(out, tuple) else (out,)
                y = next(o for o in outs if o.shape == x.shape)  # the image stream
                changes.setdefault(key, []).append(((y - x).abs().mean() / x.abs().mean()).item())

            handles.append(block.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(block.register_forward_hook(after, with_kwargs=True))
    try:
        yield changes
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_block_changes_its_input(
    variant: str, model: Callable[[str], comfy.model_patcher.ModelPatcher]
) -> None:
    patcher = model(variant)
    dm = patcher.model.diffusion_model
    with _block_changes(dm) as changes:
        _sample(patcher, variant, 1.0, steps=2)
    lists = BLOCK_LISTS[type(dm).__name__]
    expected = {f"{name}.{i}" for name in lists for i in range(len(getattr(dm, name)))}
    assert changes.keys() == expected
    for key, values in changes.items():
        assert min(values) > 0.05, key
