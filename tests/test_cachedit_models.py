"""Apply Cache-DiT on tiny models of every family, sampled by ComfyUI's own samplers."""

from __future__ import annotations

from functools import partial
from typing import Any, Self

import comfy.sample
import pytest
import runs
import tiny_models as tm
import torch
from dit_cache.nodes.cachedit_node import ApplyCacheDiT
from probes import LAYOUTS

STEPS = 10
ALL = tm.VARIANTS


def cachedit(model: Any, **settings: Any) -> Any:
    return runs.apply(model, "cachedit", **settings)


sample = partial(runs.sample, steps=STEPS)


def last_run(patched: Any) -> Any:
    return runs.last_run(patched, "cachedit")


def blocks(model: Any, variant: str) -> list[torch.nn.Module]:
    dm = model.model.diffusion_model
    return [block for name in LAYOUTS[tm.family(variant)].blocks for block in getattr(dm, name)]


class BlockCounter:
    """Counts, per call of the diffusion model, which blocks ran (torch hooks, not the pack).

    A block ran when its own layers did: the block module itself is entered even when skipped
    where the pack's hook is an object patch of its forward (Z-Image).
    """

    def __init__(self, model: Any, variant: str):
        self.dm = model.model.diffusion_model
        self.blocks = blocks(model, variant)
        self.calls: list[list[int]] = []
        self.handles: list[Any] = []

    def __enter__(self) -> Self:
        self.handles.append(self.dm.register_forward_pre_hook(lambda m, a: self.calls.append([])))
        for index, block in enumerate(self.blocks):
            for child in block.children():
                self.handles.append(child.register_forward_pre_hook(lambda m, a, i=index: self._ran(i)))
        return self

    def _ran(self, index: int) -> None:
        if index not in self.calls[-1]:
            self.calls[-1].append(index)

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


class StackOutputs:
    """Per call (torch hooks, not the pack): block 0's image output and the image leaving the block stack."""

    def __init__(self, model: Any, variant: str):
        self.dm = model.model.diffusion_model
        self.layout = LAYOUTS[tm.family(variant)]
        self.first = blocks(model, variant)[0]
        self.fn: list[torch.Tensor] = []
        self.stack: list[torch.Tensor] = []

    def __enter__(self) -> Self:
        index = self.layout.first_block_image
        self.handles = [
            self.first.register_forward_hook(
                lambda m, a, out: self.fn.append((out if index is None else out[index]).clone())
            ),
            getattr(self.dm, self.layout.stack_out[0]).register_forward_pre_hook(
                lambda m, a: self.stack.append(a[0].clone())
            ),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("variant", ALL)
def test_forced_caching_skips_exactly_the_middle_blocks(models, variant) -> None:
    model = models[variant]
    n = len(blocks(model, variant))
    fn, bn = 1, 1
    patched = cachedit(model, Fn_compute_blocks=fn, Bn_compute_blocks=bn, residual_diff_threshold=1.0,
                       max_warmup_steps=2, max_continuous_cached_steps=-1)
    with BlockCounter(model, variant) as counter:
        result = sample(patched, variant)
    run = last_run(patched)
    cached = [not r.computed for r in run.records]
    assert cached == [False, False] + [True] * (STEPS - 2)
    for ran, is_cached in zip(counter.calls, cached):
        assert ran == (list(range(fn)) + list(range(n - bn, n)) if is_cached else list(range(n)))
    assert torch.isfinite(result).all()


@pytest.mark.parametrize("variant", tm.ONE_PER_FAMILY)
def test_cached_step_output_is_the_fn_output_plus_the_cached_middle_residual(models, variant) -> None:
    """With Fn = 1 and Bn = 0: on a cached step, stack output = block-0 output + the residual the
    middle blocks produced on the last computed step (image tokens), exactly."""
    model = models[variant]
    patched = cachedit(model, Fn_compute_blocks=1, residual_diff_threshold=1.0, max_warmup_steps=3,
                       max_continuous_cached_steps=-1)
    with StackOutputs(model, variant) as outputs:
        sample(patched, variant)
    fn_out, stack_out = outputs.fn, outputs.stack
    computed = [r.computed for r in last_run(patched).records]
    assert computed == [True] * 3 + [False] * (STEPS - 3)
    residual = None
    for call, was_computed in enumerate(computed):
        image_out = stack_out[call]
        assert image_out.shape == fn_out[call].shape
        if was_computed:
            residual = image_out - fn_out[call]
        else:
            assert torch.equal(image_out, fn_out[call] + residual)


def cache_dit_calibrator(name: str) -> Any:
    """cache-dit's own calibrator, built from its own config: the reference our forecasts must equal."""
    import cache_dit
    from cache_dit.caching.cache_contexts.calibrators import Calibrator

    config = {"taylorseer": cache_dit.TaylorSeerCalibratorConfig, "foca": cache_dit.FoCaCalibratorConfig,
              "dmd": cache_dit.DMDCalibratorConfig}[name]()
    return Calibrator(config)


@pytest.mark.parametrize(
    ("variant", "cfg", "calibrator"),
    # DMD fits the whole cached tensor, which on Flux is the joint text + image sequence after its single blocks:
    # the image tokens alone do not give its forecast. Flux's DMD is checked against cache-dit end to end instead
    # (test_cachedit_vs_cache_dit.py); TaylorSeer and FoCa work per element.
    [("flux", 1.0, "taylorseer"), ("flux", 1.0, "foca"),
     ("wan21_t2v", 3.0, "taylorseer"), ("wan21_t2v", 3.0, "foca"), ("wan21_t2v", 3.0, "dmd")],
)
def test_cached_step_output_is_the_fn_output_plus_the_calibrators_forecast(models, variant, cfg, calibrator) -> None:
    """On a cached call, stack output = block-0 output + what cache-dit's calibrator forecasts from the middle
    residuals of the branch's computed calls, one calibrator per CFG branch, advanced once per call (Wan: the
    two branches in separate calls). Every run starts afresh: a second run on the same MODEL gives the same."""
    model = models[variant]
    steps = 16  # warm-up 4, then cached and computed in turn: DMD gets the 4 evenly spaced steps it fits on
    patched = cachedit(model, Fn_compute_blocks=1, residual_diff_threshold=1.0, max_warmup_steps=4,
                       max_continuous_cached_steps=1, calibrator=calibrator)
    with StackOutputs(model, variant) as outputs:
        result = sample(patched, variant, steps=steps, cfg=cfg, lengths=tm.SPLIT_LENGTHS)
    records = last_run(patched).records
    again = sample(patched, variant, steps=steps, cfg=cfg, lengths=tm.SPLIT_LENGTHS)
    fn_out, stack_out = outputs.fn, outputs.stack
    assert torch.equal(again, result)
    references: dict[Any, Any] = {}
    for call, record in enumerate(records):
        (branch,) = record.branches
        reference = references.setdefault(branch, cache_dit_calibrator(calibrator))
        reference.mark_step_begin()
        if record.computed:
            reference.update(stack_out[call] - fn_out[call])
        else:
            assert torch.equal(stack_out[call], fn_out[call] + reference.approximate()), call
    assert len(references) == (2 if cfg > 1 else 1) and sum(not r.computed for r in records) >= 5


@pytest.mark.parametrize(("preset", "steps"), [("medium", 28), ("fast", 20)])
def test_scm_static_computes_exactly_the_masks_compute_steps(models, preset, steps) -> None:
    import cache_dit

    mask = cache_dit.steps_mask(total_steps=steps, mask_policy=preset)
    patched = cachedit(models["flux"], scm_preset=preset, scm_policy="static")
    sample(patched, "flux", steps=steps)
    computed = [r.computed for r in last_run(patched).records]
    assert computed == [m == 1 for m in mask]


@pytest.mark.parametrize("path", ["batched", "split"])
def test_cfg_branches_keep_separate_state(models, path) -> None:
    model = models["wan21_t2v"]
    lengths = (8, 8) if path == "batched" else tm.SPLIT_LENGTHS
    expected = sample(model, "wan21_t2v", cfg=3.0, lengths=lengths)
    assert torch.equal(sample(cachedit(model, residual_diff_threshold=0.0), "wan21_t2v", cfg=3.0, lengths=lengths),
                       expected)
    patched = cachedit(model, residual_diff_threshold=1.0, max_warmup_steps=2, max_continuous_cached_steps=2)
    sample(patched, "wan21_t2v", cfg=3.0, lengths=lengths)
    records = last_run(patched).records
    assert len({key for r in records for key in r.branches}) == 2
    per_step = 1 if path == "batched" else 2
    assert len(records) == per_step * STEPS and all(len(r.branches) == 2 // per_step for r in records)
    # Each branch follows the same rule on its own counters: warm-up 2, then 2 cached, 1 computed, ...
    for branch in {key for r in records for key in r.branches}:
        mine = [r.computed for r in records if branch in r.branches]
        assert mine == [True, True, False, False, True, False, False, True, False, False]


def test_fn_plus_bn_must_leave_middle_blocks(models) -> None:
    with pytest.raises(ValueError, match="less than this flux model's 4 transformer blocks"):
        ApplyCacheDiT.execute(models["flux"], Fn_compute_blocks=3, Bn_compute_blocks=1)


def test_taylorseer_hidden_states_with_bn_blocks_that_update_in_place(models) -> None:
    """Flux's blocks update their input in place: the cached hidden states must not move with them.

    TaylorSeer's first cached step after a restart has no derivative yet (as cache-dit), so it
    replays the last computed middle output exactly: what the Bn block received then.
    """
    model = models["flux"]
    patched = cachedit(model, Fn_compute_blocks=1, Bn_compute_blocks=1, residual_diff_threshold=1.0,
                       max_warmup_steps=3, max_continuous_cached_steps=-1, calibrator="taylorseer",
                       calibrator_cache_type="hidden_states")
    bn_inputs: list[torch.Tensor] = []
    bn_block = model.model.diffusion_model.single_blocks[-1]
    handle = bn_block.register_forward_pre_hook(lambda m, a: bn_inputs.append(a[0].clone()))
    try:
        result = sample(patched, "flux")
    finally:
        handle.remove()
    assert [r.computed for r in last_run(patched).records] == [True] * 3 + [False] * (STEPS - 3)
    assert torch.equal(bn_inputs[3], bn_inputs[2])
    assert torch.isfinite(result).all()


def test_scm_custom_bins(models) -> None:
    patched = cachedit(models["wan21_t2v"], scm_preset="custom", scm_policy="static",
                       scm_compute_bins="4, 2, 1", scm_cache_bins="2, 1")
    sample(patched, "wan21_t2v")
    assert [r.computed for r in last_run(patched).records] == [True] * 4 + [False] * 2 + [True] * 2 + [False] + [True]


def test_multi_evaluation_sampler_counts_sampler_steps(models) -> None:
    patched = cachedit(models["hunyuan_video"], residual_diff_threshold=1.0, max_warmup_steps=2,
                       max_continuous_cached_steps=2)
    latent = tm.latent("hunyuan_video")["samples"]
    noise = comfy.sample.prepare_noise(latent, 0)
    pos, neg = tm.conditioning("hunyuan_video", seed=1), tm.conditioning("hunyuan_video", seed=2)
    out = comfy.sample.sample(patched, noise, 6, 1.0, "heun", "simple", pos, neg, latent, disable_pbar=True, seed=0)
    records = last_run(patched).records
    # Heun's correction call at sigma[i + 1] shares that noise level, hence the step, with the
    # next step's first call: two calls per step after the first.
    assert [r.step for r in records] == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # Warm-up covers steps 0-1; then at most 2 cached steps in a row, counted in sampler steps.
    cached_steps = sorted({r.step for r in records if not r.computed})
    assert cached_steps == [2, 3, 5] and torch.isfinite(out).all()
