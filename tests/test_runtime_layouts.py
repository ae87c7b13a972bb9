"""What a ComfyUI version decides is read from what it passes at run time, never assumed.

- The order of the joint (text + image) sequence in Flux's and HunyuanVideo's single blocks
  (0.3.75 joins HunyuanVideo as image first, 0.33 as text first): a sequence laid out in no
  order the pack can verify turns caching off for the run, with one warning, instead of
  applying residuals to the wrong tokens.
- ComfyUI's multi-GPU path runs CFG branches of one run in parallel threads: each branch
  decides exactly as in a sequential run.
"""
from __future__ import annotations

import inspect
import itertools
import logging
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import comfy.sample
import pytest
import tiny_models as tm
import torch
from comfy.patcher_extension import WrappersMP
from dit_cache.nodes.cachedit_node import ApplyCacheDiT
from dit_cache.nodes.teacache_node import ApplyTeaCache
from runs import EAGER, PATCHES, apply, last_run, sample

STEPS = 8
JOINT_VARIANTS = ("flux", "hunyuan_video")


def eager(method: str, model: Any) -> Any:
    return apply(model, method, **EAGER[method])



class _RolledJoint:
    """The torch module as a model file sees it, except that the joint sequence comes out rotated by one token:
    a stand-in for a ComfyUI version that lays the joint sequence out in an order the pack does not know."""

    def __init__(self, hidden: int):
        self.hidden = hidden

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    def cat(self, tensors: Any, dim: int = 0, **kw: Any) -> torch.Tensor:
        joined = torch.cat(tensors, dim, **kw)
        parts = list(tensors)
        if len(parts) == 2 and all(t.ndim == 3 and t.shape[-1] == self.hidden for t in parts):
            return torch.roll(joined, 1, dims=1)
        return joined


@pytest.mark.parametrize("variant", JOINT_VARIANTS)
@pytest.mark.parametrize("method", list(PATCHES))
def test_an_unknown_joint_layout_turns_caching_off_instead_of_corrupting(models, variant, method, monkeypatch,
                                                                          caplog) -> None:
    model = models[variant]
    dm = model.model.diffusion_model
    monkeypatch.setattr(sys.modules[type(dm).__module__], "torch", _RolledJoint(dm.hidden_size))
    expected = sample(model, variant)  # what this "ComfyUI" computes without caching
    patched = eager(method, model)
    with caplog.at_level(logging.WARNING):
        result = sample(patched, variant)
    assert torch.equal(result, expected)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("dit_cache")]
    assert len(warnings) == 1 and f"{variant}: the first joint block's input" in warnings[0], warnings
    run = last_run(patched, method)
    assert "first joint block" in run.disabled and not run.skipped_steps


@pytest.mark.parametrize("variant", JOINT_VARIANTS)
@pytest.mark.parametrize("method", list(PATCHES))
def test_the_joint_layout_is_verified_once_per_run_and_caching_goes_on(models, variant, method) -> None:
    patched = eager(method, models[variant])
    checks = {"made": 0, "calls": 0}
    checking_calls: list[int] = []  # the model calls (counted over both runs) in which a comparison was made
    original = torch.equal

    def counting(a: torch.Tensor, b: torch.Tensor) -> bool:
        checks["made"] += 1
        return original(a, b)

    def count_calls(executor: Any, *args: Any, **kwargs: Any) -> Any:
        checks["calls"] += 1
        before = checks["made"]
        out = executor(*args, **kwargs)
        if checks["made"] > before:
            checking_calls.append(checks["calls"])
        return out

    patched.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test.count", count_calls)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "equal", counting)
        sample(patched, variant)
        sample(patched, variant)
    # Only the first call of each run compares (one order, or both where ComfyUI does not say which).
    assert checking_calls == [1, STEPS + 1] and checks["made"] <= 4
    run = last_run(patched, method)
    assert run.disabled is None and run.skipped_steps


def _parallel_branches(barrier: threading.Barrier) -> Any:
    """A CALC_COND_BATCH wrapper that evaluates the positive and negative conds in two threads at once,
    as ComfyUI's multi-GPU path does on several devices."""

    def wrapper(executor: Any, model: Any, conds: list, x_in: torch.Tensor, timestep: torch.Tensor,
                model_options: dict) -> list[torch.Tensor]:
        if len(conds) < 2 or conds[1] is None:
            return executor(model, conds, x_in, timestep, model_options)
        outputs: list[Any] = [None] * len(conds)
        errors: list[BaseException] = []

        def branch(i: int) -> None:
            try:
                only = [c if j == i else None for j, c in enumerate(conds)]
                outputs[i] = executor(model, only, x_in, timestep, model_options)[i]
            except BaseException as error:  # re-raised in the sampler's thread
                errors.append(error)
                barrier.abort()

        threads = [threading.Thread(target=branch, args=(i,)) for i in range(len(conds))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return outputs

    return wrapper


def _meet(barrier: threading.Barrier) -> Any:
    """Inside our DIFFUSION_MODEL wrapper: both branch calls have begun before either runs a block."""

    def wrapper(executor: Any, *args: Any, **kwargs: Any) -> Any:
        barrier.wait(timeout=60)
        return executor(*args, **kwargs)

    return wrapper


def _per_branch(records: Any) -> list[tuple]:
    """Each branch's (step, change, computed) sequence, branches in no particular order."""
    branches: dict[Any, list] = defaultdict(list)
    for record in records:
        assert len(record.branches) == 1
        branches[record.branches[0]].append((record.step, record.rel_l1[0], record.computed))
    return sorted(tuple(sequence) for sequence in branches.values())


@pytest.mark.parametrize(("method", "variant"), [("teacache", "wan21_t2v"), ("cachedit", "wan21_t2v"),
                                                 ("cachedit", "flux")])
def test_branches_computed_in_parallel_threads_decide_as_in_a_sequential_run(models, method, variant) -> None:
    patched = eager(method, models[variant])
    expected = sample(patched, variant, cfg=3.0, lengths=tm.SPLIT_LENGTHS)
    sequential = last_run(patched, method)

    barrier = threading.Barrier(2)
    threaded = patched.clone()
    threaded.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, "test.parallel", _parallel_branches(barrier))
    threaded.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test.meet", _meet(barrier))
    result = sample(threaded, variant, cfg=3.0, lengths=tm.SPLIT_LENGTHS)
    parallel = last_run(threaded, method)

    assert torch.equal(result, expected)
    assert parallel.disabled is None and len(parallel.records) == len(sequential.records) == 2 * STEPS
    assert _per_branch(parallel.records) == _per_branch(sequential.records)
    assert sequential.skipped_steps  # the runs really cached


def _reference_model(variant: str, models: dict[str, Any]) -> Any:
    """A tiny model that takes reference images. Qwen-Image's default method appends their tokens at the
    step's timestep (Edit 2509). Qwen-Image-Edit 2511 gives them a timestep-zero modulation row by default
    (what detection sets for a checkpoint with ``__index_timestep_zero__``); Flux.2 takes that method from
    the conditioning, as FluxKontextMultiReferenceLatentMethod sets it.
    """
    if variant not in tm.VARIANTS:
        pytest.skip(f"this ComfyUI cannot build {variant} (its timestep-zero reference method came with 0.33)")
    model = models[variant]
    dm = model.model.diffusion_model
    if variant == "flux2" and "timestep_zero_index" not in inspect.signature(dm.forward_orig).parameters:
        pytest.skip("this ComfyUI's Flux.2 has no timestep-zero reference method (it came with 0.33)")
    return model


def _with_reference(variant: str, seed: int) -> list:
    conditioning = tm.conditioning(variant, seed=seed)
    conditioning[0][1]["reference_latents"] = [tm.reference_latent(variant)]
    if variant == "flux2":
        conditioning[0][1]["reference_latents_method"] = "index_timestep_zero"
    return conditioning


def _modulation_rows(model: Any, family: str) -> tuple[Any, Callable[[tuple], int]]:
    """The module that turns the time embedding into block 0's image modulation, and its rows per sample."""
    dm = model.model.diffusion_model
    if family == "qwen_image":  # temb [rows * batch, dim]; one sample here
        return dm.transformer_blocks[0].img_mod, lambda args: args[0].shape[0]
    return dm.double_stream_modulation_img, lambda args: args[0].shape[1]  # Flux.2: [batch, rows, dim]


@pytest.mark.parametrize(("variant", "rows_per_sample"), [("qwen_image", 1), ("qwen_image_edit_2511", 2), ("flux2", 2)])
def test_reference_images_are_measured_and_cached_on_the_right_rows(models, variant, rows_per_sample) -> None:
    from probes import ModelProbe, relative_l1

    model = _reference_model(variant, models)
    family = tm.family(variant)
    latent = tm.latent(variant)["samples"]

    def run(m: Any) -> torch.Tensor:
        return comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), STEPS, 1.0, "euler", "simple",
                                   _with_reference(variant, 1), _with_reference(variant, 2), latent,
                                   seed=0, disable_pbar=True)

    rows: list[int] = []
    module, count = _modulation_rows(model, family)
    handle = module.register_forward_pre_hook(lambda module, args: rows.append(count(args)))
    try:
        expected = run(model)
    finally:
        handle.remove()
    # One sample: one modulation row, or two where the reference really runs at timestep zero.
    assert set(rows) == {rows_per_sample}
    exact = ApplyTeaCache.execute(model, model_type="auto", rel_l1_thresh=0.0, coefficients="1, 0")[0]
    with ModelProbe(exact, family) as probe:
        assert torch.equal(run(exact), expected)
    records = last_run(exact, "teacache").records
    # Block 0's real modulated input: the image's rows at the step's timestep, the reference's at its own.
    modulated = [call.modulated[0] for call in probe.calls]
    assert modulated[0].shape[1] == 64 + 16  # 8x8 image tokens, then 4x4 reference tokens
    independent = [relative_l1(a, b) for a, b in itertools.pairwise(modulated)]
    assert [r.rel_l1[0] for r in records[1:]] == pytest.approx(independent, rel=1e-4)

    skipping = eager("teacache", model)
    with ModelProbe(skipping, family) as probe:
        run(skipping)
    decisions = [r.computed for r in last_run(skipping, "teacache").records]
    assert not all(decisions)
    residual = None
    for call, computed in zip(probe.calls, decisions):  # the whole stream, reference tokens too
        stack_in = probe.stack_input(call)
        if computed:
            residual = call.stack_out - stack_in
        else:
            assert torch.equal(call.stack_out, stack_in + residual)

    # Cache-DiT: off is bit-identical; on, it caches (the reference tokens ride in the image stream).
    off = ApplyCacheDiT.execute(model, residual_diff_threshold=0.0)[0]
    assert torch.equal(run(off), expected)
    cached = eager("cachedit", model)
    run(cached)
    summary = last_run(cached, "cachedit")
    assert summary.disabled is None and summary.skipped_steps
