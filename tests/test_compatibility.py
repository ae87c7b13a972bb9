"""Both nodes in the situations users put them in, inside the real ComfyUI: LoRA, ControlNet,
other packs' patches, another cache on the same model, other weight dtypes, partial and
repeated sampling, interruption, faults inside the cache, and the memory a run leaves behind.
"""
from __future__ import annotations

import gc
import logging
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Self

import comfy.controlnet
import comfy.ldm.flux.controlnet
import comfy.ldm.qwen_image.controlnet
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sample
import comfy.samplers
import comfy.sd
import comfy.supported_models
import comfy.utils
import folder_paths
import pytest
import tiny_models as tm
import torch
from comfy_extras.nodes_easycache import EasyCacheNode
from dit_cache.caching.dbcache import DBCacheBranch
from dit_cache.caching.teacache import TeaCacheRun
from probes import replay_rule
from runs import EAGER, METHODS, OFF, PATCHES, apply, held_tensors, last_run, sample

import nodes

STEPS = 8


_PLAIN: dict[str, torch.Tensor] = {}


def plain(models: dict[str, Any], variant: str) -> torch.Tensor:
    """The unpatched model's result with the default settings, sampled once per module."""
    if variant not in _PLAIN:
        _PLAIN[variant] = sample(models[variant], variant)
    return _PLAIN[variant]


def eager(method: str, model: Any, **settings: Any) -> Any:
    """The method caching whatever its rules allow (runs.EAGER)."""
    return apply(model, method, **{**EAGER[method], **settings})


def exact(method: str, model: Any) -> Any:
    """The method with caching off: must be bit-identical to the model it patches."""
    return apply(model, method, **OFF[method])


def warnings_with(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


# --- LoRA -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_lora(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A rank-4 LoRA file for the tiny Flux, in a folder ComfyUI's LoraLoader lists."""
    folder = tmp_path_factory.mktemp("loras")
    generator = torch.Generator().manual_seed(7)
    lora = {}
    for target, (out_dim, in_dim) in {"double_blocks.0.img_attn.qkv": (384, 128),
                                      "single_blocks.1.linear1": (896, 128)}.items():
        lora[f"diffusion_model.{target}.lora_up.weight"] = torch.randn(out_dim, 4, generator=generator) * 0.3
        lora[f"diffusion_model.{target}.lora_down.weight"] = torch.randn(4, in_dim, generator=generator) * 0.3
    comfy.utils.save_torch_file(lora, str(folder / "tiny-flux-lora.safetensors"))
    folder_paths.add_model_folder_path("loras", str(folder))
    return "tiny-flux-lora.safetensors"


def with_lora(model: Any, name: str) -> Any:
    return nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]


@pytest.mark.parametrize("method", METHODS)
def test_lora_before_or_after_the_node(models, flux_lora, method) -> None:
    model = models["flux"]
    expected = sample(with_lora(model, flux_lora), "flux")
    assert not torch.equal(expected, plain(models, "flux"))  # the LoRA really changes the model
    assert torch.equal(sample(exact(method, with_lora(model, flux_lora)), "flux"), expected)
    assert torch.equal(sample(with_lora(exact(method, model), flux_lora), "flux"), expected)

    before = eager(method, with_lora(model, flux_lora))
    after = with_lora(eager(method, model), flux_lora)
    cached = sample(before, "flux")
    assert last_run(before, method).skipped_steps
    assert torch.equal(sample(after, "flux"), cached)  # the same patched weights, the same decisions
    assert last_run(after, method).skipped_steps == last_run(before, method).skipped_steps


# --- weights in other dtypes and ops classes -----------------------------------------------------


@pytest.mark.parametrize(("method", "dtype"), [("teacache", torch.float16), ("cachedit", torch.bfloat16),
                                               ("teacache", torch.float8_e4m3fn), ("cachedit", torch.float8_e4m3fn)],
                         ids=str)
def test_weight_dtypes_and_manual_cast_ops_are_left_alone(tmp_path_factory, method, dtype) -> None:
    path = tmp_path_factory.getbasetemp() / "tiny-wan21_t2v-dtypes.safetensors"
    if not path.exists():
        tm.write_checkpoint("wan21_t2v", path)
    # What UNETLoader's weight_dtype does: weights stored in `dtype`, ComfyUI's cast ops compute.
    model = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": dtype})
    weights = model.model.diffusion_model.blocks[1].self_attn.q.weight
    assert weights.dtype == dtype
    snapshot = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    expected = sample(model, "wan21_t2v")
    assert torch.equal(sample(exact(method, model), "wan21_t2v"), expected)
    patched = eager(method, model)
    result = sample(patched, "wan21_t2v")
    assert last_run(patched, method).skipped_steps and torch.isfinite(result).all()
    assert patched.patches == model.patches == {}  # no weight patches: the node never touches weights
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(after[k], v) and after[k].dtype == v.dtype for k, v in snapshot.items())


# --- ControlNet ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def controlnets() -> dict[str, tuple[comfy.controlnet.ControlNet, torch.Tensor]]:
    """Tiny ControlNets built from ComfyUI's classes as its loaders build them, with a hint each.

    Flux: XLabs-style ControlNetFlux on an image 8x the latent. Qwen-Image: the InstantX
    QwenImageControlNetModel, given its hint as a latent (the loader's VAE encode step left out).
    """
    flux = comfy.ldm.flux.controlnet.ControlNetFlux(
        operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32, **tm.unet_config("flux")
    )
    qwen_config = {k: v for k, v in tm.unet_config("qwen_image").items() if k != "image_model"}
    qwen = comfy.ldm.qwen_image.controlnet.QwenImageControlNetModel(
        operations=comfy.ops.disable_weight_init, device="cpu", dtype=torch.float32, **qwen_config
    )
    tm._fill_weights(flux, "flux_controlnet", 0)
    tm._fill_weights(qwen, "qwen_controlnet", 0)
    cpu = torch.device("cpu")
    generator = torch.Generator().manual_seed(3)
    return {
        "flux": (comfy.controlnet.ControlNet(flux, load_device=cpu, manual_cast_dtype=None, extra_conds=["y", "guidance"]),
                 torch.rand(1, 128, 128, 3, generator=generator)),
        "qwen_image": (comfy.controlnet.ControlNet(qwen, compression_ratio=1, latent_format=None, load_device=cpu,
                                                   manual_cast_dtype=None, extra_conds=[]),
                       torch.rand(1, 1, 16, 16, 16, generator=generator)),
    }


def controlled(variant: str, controlnets: dict[str, Any], start: float, end: float) -> tuple[Any, Any]:
    """Positive and negative conditioning with the ControlNet applied by ComfyUI's own node."""
    controlnet, hint = controlnets[variant]
    return nodes.ControlNetApplyAdvanced().apply_controlnet(
        tm.conditioning(variant, seed=1), tm.conditioning(variant, seed=2), controlnet, hint, 1.0, start, end
    )


@pytest.mark.parametrize("variant", ["flux", "qwen_image"])
@pytest.mark.parametrize("method", METHODS)
def test_controlnet_residuals_are_never_dropped(models, controlnets, method, variant) -> None:
    model = models[variant]
    positive, negative = controlled(variant, controlnets, 0.0, 1.0)
    expected = sample(model, variant, positive=positive, negative=negative)
    assert not torch.equal(expected, plain(models, variant))  # the ControlNet really acts
    # Control on every step: every call computes, so the result is exactly the uncached one.
    patched = eager(method, model)
    assert torch.equal(sample(patched, variant, positive=positive, negative=negative), expected)
    run = last_run(patched, method)
    assert run.calls == STEPS and run.calls_computed == STEPS

    # Control on the first half only: those steps compute, the second half may cache.
    positive, negative = controlled(variant, controlnets, 0.0, 0.5)
    sample(patched, variant, positive=positive, negative=negative)
    sampling = model.model.model_sampling
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS).tolist()
    controlled_steps = {i for i in range(STEPS) if sigmas[i] >= float(sampling.percent_to_sigma(0.5))}
    skipped = set(last_run(patched, method).skipped_steps)
    assert 0 < len(controlled_steps) < STEPS and skipped
    assert not skipped & controlled_steps


# --- other packs' patches and other caches on the same model --------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_another_packs_block_replacement_keeps_running_on_computed_calls(models, method) -> None:
    model = models["flux"].clone()
    seen: list[int] = []

    def other_pack(args: dict, extra: dict) -> dict:
        seen.append(1)
        return extra["original_block"](args)

    model.set_model_patch_replace(other_pack, "dit", "double_block", 1)  # a middle block (Fn = 1)
    patched = eager(method, model)
    sample(patched, "flux")
    run = last_run(patched, method)
    assert 0 < len(seen) == run.calls_computed < run.calls


@pytest.mark.parametrize("variant", ["qwen_image", "z_image"])  # Z-Image's Fun ControlNet acts through these
@pytest.mark.parametrize("method", METHODS)
def test_per_block_patches_force_computing_and_keep_running(models, method, variant) -> None:
    model = models[variant].clone()
    seen: list[int] = []

    def double_block_patch(args: dict) -> dict:
        seen.append(args["block_index"])
        return {"img": args["img"], "txt": args["txt"]}

    model.set_model_patch(double_block_patch, "double_block")
    expected = sample(model, variant)
    plain = len(seen)
    if plain == 0:
        pytest.skip(f"this ComfyUI's {variant} runs no per-block patches (Z-Image's came with 0.33, for its Fun ControlNet)")
    seen.clear()
    patched = eager(method, model)
    assert torch.equal(sample(patched, variant), expected)
    assert all(r.computed for r in last_run(patched, method).records) and len(seen) == plain


@pytest.mark.parametrize("method", METHODS)
def test_a_block_replaced_after_the_node_turns_caching_off_for_the_run(models, method, caplog) -> None:
    def other_pack(args: dict, extra: dict) -> dict:
        out = extra["original_block"](args)
        return {"img": out["img"] * 1.01, "txt": out["txt"]}

    other_only = models["flux"].clone()
    other_only.set_model_patch_replace(other_pack, "dit", "double_block", 1)
    patched = eager(method, models["flux"]).clone()
    patched.set_model_patch_replace(other_pack, "dit", "double_block", 1)  # overwrites our hook there
    with caplog.at_level(logging.WARNING):
        result = sample(patched, "flux")
    assert torch.equal(result, sample(other_only, "flux"))
    assert "replaced" in last_run(patched, method).disabled
    assert len(warnings_with(caplog, "replaced")) == 1


@pytest.mark.parametrize(("first", "second"), [("teacache", "cachedit"), ("cachedit", "teacache")])
def test_the_later_of_our_nodes_replaces_the_earlier_with_one_warning(models, first, second, caplog) -> None:
    model = models["flux"]
    with caplog.at_level(logging.WARNING):
        both = eager(second, eager(first, model))
    assert len(warnings_with(caplog, "replaces the")) == 1
    options = both.model_options["transformer_options"]
    assert PATCHES[first].key not in options and PATCHES[second].key in options
    assert all(PATCHES[first].key not in both.wrappers.get(kind, {}) for kind in ("outer_sample", "diffusion_model"))
    assert torch.equal(sample(both, "flux"), sample(eager(second, model), "flux"))
    assert last_run(both, second).skipped_steps


@pytest.mark.parametrize("order", ["easycache_first", "ours_first"])
@pytest.mark.parametrize("method", METHODS)
def test_with_easycache_ours_steps_aside_with_one_warning(models, method, order, caplog) -> None:
    model = models["wan21_t2v"]

    def easycache(m: Any) -> Any:
        return EasyCacheNode.execute(m, reuse_threshold=0.5, start_percent=0.0, end_percent=1.0, verbose=False)[0]

    if "easycache" not in _PLAIN:
        _PLAIN["easycache"] = sample(easycache(model), "wan21_t2v", cfg=3.0)
    both = eager(method, easycache(model)) if order == "easycache_first" else easycache(eager(method, model))
    with caplog.at_level(logging.WARNING):
        assert torch.equal(sample(both, "wan21_t2v", cfg=3.0), _PLAIN["easycache"])
    assert "EasyCache" in last_run(both, method).disabled
    assert len(warnings_with(caplog, "EasyCache")) == 1


# --- sampling patterns ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_img2img_partial_denoise_follows_the_partial_schedule(models, method) -> None:
    model = models["flux"]
    assert torch.equal(sample(exact(method, model), "flux", denoise=0.5), sample(model, "flux", denoise=0.5))
    patched = eager(method, model)
    sample(patched, "flux", denoise=0.5)
    run = last_run(patched, method)
    assert run.total_steps == STEPS and [r.step for r in run.records] == list(range(STEPS))
    computed = [r.computed for r in run.records]
    if method == "teacache":
        assert computed == replay_rule(run.records, 10.0, (1.0, 0.0), STEPS)
        assert computed[0] and computed[-1] and not any(computed[1:-1])
    else:
        assert computed == [True, True] + [False] * (STEPS - 2)


@pytest.mark.parametrize("method", METHODS)
def test_resolution_batch_and_video_length_changes_on_one_patched_model(models, method) -> None:
    model = models["wan21_t2v"]
    patched = eager(method, model)
    first = sample(patched, "wan21_t2v")
    for latent in (tm.latent("wan21_t2v", size=12)["samples"], tm.latent("wan21_t2v", batch=2)["samples"],
                   tm.latent("wan21_t2v", frames=5)["samples"]):
        out = sample(patched, "wan21_t2v", latent=latent)
        run = last_run(patched, method)
        assert out.shape == latent.shape and torch.isfinite(out).all()
        assert run.records[0].computed and run.skipped_steps  # a clean start, then caching again
    assert torch.equal(sample(patched, "wan21_t2v"), first)  # nothing stale from the other runs


@pytest.mark.parametrize("method", METHODS)
def test_a_batch_of_two_identical_latents_decides_and_renders_as_one(models, method) -> None:
    model = models["flux"]
    single = tm.latent("flux")["samples"]
    threshold = {"rel_l1_thresh": 0.3} if method == "teacache" else {"residual_diff_threshold": 0.85}
    patched = eager(method, model, **threshold)
    noise = comfy.sample.prepare_noise(single, 0)
    one = sample(patched, "flux", latent=single, noise=noise)
    decisions = [r.computed for r in last_run(patched, method).records]
    two = sample(patched, "flux", latent=single.repeat(2, 1, 1, 1), noise=noise.repeat(2, 1, 1, 1))
    assert [r.computed for r in last_run(patched, method).records] == decisions
    assert True in decisions and False in decisions
    torch.testing.assert_close(two[0], one[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(two[1], one[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_dpmpp_2s_midpoint_calls_count_in_their_step(models, method) -> None:
    model = models["flux"]
    patched = eager(method, model)
    out = sample(patched, "flux", steps=6, sampler="dpmpp_2s_ancestral")
    records = last_run(patched, method).records
    steps = [r.step for r in records]
    # Two calls per step (the second at a sigma between the step's two), one in the last step.
    assert steps == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5] and torch.isfinite(out).all()
    computed = {s for s in range(6) if any(r.computed for r in records if r.step == s)}
    assert computed == ({0, 5} if method == "teacache" else {0, 1})


# --- interruption, faults, memory --------------------------------------------------------------


def interrupt_at(step: int) -> Callable[..., None]:
    """A sampler callback that interrupts as the server does (the flag, then the check in the progress hook)."""
    def callback(index: int, *args: Any) -> None:
        if index == step:
            comfy.model_management.interrupt_current_processing(True)
            comfy.model_management.throw_exception_if_processing_interrupted()
    return callback


@pytest.mark.parametrize("method", METHODS)
def test_an_interrupted_run_leaves_nothing_behind(models, method) -> None:
    model = models["flux"]
    patched = eager(method, model)
    expected = sample(eager(method, model), "flux")
    stored = StoredTensors()
    with stored, pytest.raises(comfy.model_management.InterruptProcessingException) as interrupted:
        sample(patched, "flux", callback=interrupt_at(4))
    run = last_run(patched, method)
    assert {r.step for r in run.records} == set(range(5)) and run.skipped_steps  # finished at the interrupt
    assert PATCHES[method].run_key not in patched.model_options["transformer_options"]
    gc.collect()
    assert stored.refs and stored.alive() == 0  # even while the traceback keeps the run's frames
    assert interrupted.traceback is not None
    assert torch.equal(sample(patched, "flux"), expected)  # the next run is clean


# method -> phase -> (class, method, which call of it fails): the first decision that would cache,
# the first replay, the first store (one call per step at cfg 1; Cache-DiT warms up 2 steps).
FAULTS = {
    "teacache": {"decide": (TeaCacheRun, "decide", 1), "apply": (TeaCacheRun, "apply", 0),
                 "store": (TeaCacheRun, "store", 0)},
    "cachedit": {"decide": (DBCacheBranch, "can_cache", 2), "apply": (DBCacheBranch, "approximate", 0),
                 "store": (DBCacheBranch, "store", 0)},
}


@pytest.mark.parametrize("variant", tm.ONE_PER_FAMILY)
@pytest.mark.parametrize("phase", ["decide", "apply", "store"])
@pytest.mark.parametrize("method", METHODS)
def test_a_fault_inside_the_cache_computes_instead(models, method, phase, variant, monkeypatch, caplog) -> None:
    model = models[variant]
    owner, name, failing_call = FAULTS[method][phase]
    original = getattr(owner, name)
    calls = {"n": 0}

    def faulty(self: Any, *args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] - 1 == failing_call:
            raise RuntimeError(f"injected {name} fault")
        return original(self, *args)

    patched = eager(method, model)
    monkeypatch.setattr(owner, name, faulty)
    with caplog.at_level(logging.WARNING):
        result = sample(patched, variant)
    # Nothing was replayed before the fault, and everything computes from it on: exactly uncached.
    assert torch.equal(result, plain(models, variant))
    assert len(warnings_with(caplog, f"injected {name} fault")) == 1
    assert not last_run(patched, method).skipped_steps
    monkeypatch.setattr(owner, name, original)
    sample(patched, variant)
    assert last_run(patched, method).skipped_steps  # the next run caches again


class StoredTensors:
    """Weak references to every tensor either method keeps in its cache while active."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref] = []
        self.devices: set[torch.device] = set()
        self._patches = pytest.MonkeyPatch()

    def _keep(self, tensors: Any) -> None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self.refs.append(weakref.ref(tensor))
                self.devices.add(tensor.device)

    def __enter__(self) -> Self:
        teacache_store, branch_store = TeaCacheRun.store, DBCacheBranch.store

        def store_teacache(run: TeaCacheRun, keys: Any, residual: Any) -> None:
            teacache_store(run, keys, residual)
            self._keep(run.branches[k].residual for k in keys)

        def store_branch(branch: DBCacheBranch, *args: Any) -> None:
            branch_store(branch, *args)
            self._keep([branch._fn_residual, *branch._stored, *held_tensors(branch._calibrators)])

        self._patches.setattr(TeaCacheRun, "store", store_teacache)
        self._patches.setattr(DBCacheBranch, "store", store_branch)
        return self

    def __exit__(self, *exc: object) -> None:
        self._patches.undo()

    def alive(self) -> int:
        return sum(ref() is not None for ref in self.refs)


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on deprecated module attributes warns
        warnings.simplefilter("ignore", FutureWarning)
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


@pytest.mark.parametrize(("method", "settings"), [(method, {}) for method in METHODS] + [
    ("cachedit", {"calibrator": name}) for name in ("taylorseer", "foca", "dmd")
])
def test_no_cached_tensor_outlives_a_run(models, method, settings) -> None:
    patched = eager(method, models["flux"], **settings)
    with StoredTensors() as stored:
        sample(patched, "flux", steps=3)
    assert last_run(patched, method).skipped_steps
    gc.collect()
    assert stored.refs and stored.alive() == 0


def test_twenty_runs_of_both_methods_leave_no_growth(models) -> None:
    patched = {method: eager(method, models["flux"]) for method in METHODS}
    for method in METHODS:
        sample(patched[method], "flux", steps=3)
    baseline = live_tensors()
    for run in range(20):
        method = METHODS[run // 10]
        sample(patched[method], "flux", steps=3)
        assert last_run(patched[method], method).skipped_steps
    assert live_tensors() == baseline


@pytest.mark.parametrize("method", METHODS)
def test_cache_device_cpu_keeps_cached_tensors_on_the_cpu(models, method) -> None:
    """On a GPU this separates the two devices; on a CPU-only machine both are the CPU."""
    model = models["flux"]
    main = comfy.model_management.get_torch_device()
    results = {}
    for device, expected in (("cpu", {torch.device("cpu")}), ("main_device", {torch.device(main)})):
        patched = eager(method, model, cache_device=device)
        with StoredTensors() as stored:
            results[device] = sample(patched, "flux")
        assert stored.refs and {d.type for d in stored.devices} == {d.type for d in expected}
    assert torch.equal(results["cpu"], results["main_device"])
