"""Apply TeaCache on tiny models of every family, sampled by ComfyUI's own samplers."""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any

import comfy.sample
import pytest
import runs
import tiny_models as tm
import torch
from dit_cache.caching.teacache_presets import PRESETS
from probes import ModelProbe, relative_l1, replay_rule
from runs import IDENTITY, sample

STEPS = 8
ALL = tm.VARIANTS
# TeaCache keeps one state for both CFG branches on these families (as SGLang), so CFG turns it off there.
CFG_SHARED = [v for v in ALL if tm.family(v) in ("flux", "qwen_image")]
CFG_SEPARATE = [v for v in ALL if v not in CFG_SHARED]
PATCH_KEY = runs.PATCHES["teacache"].key


def teacache(model: Any, thresh: float, coefficients: str = IDENTITY, **settings: Any) -> Any:
    return runs.apply(model, "teacache", rel_l1_thresh=thresh, coefficients=coefficients, **settings)


def last_run(patched: Any) -> Any:
    return runs.last_run(patched, "teacache")


def skipping_threshold(records: list[Any]) -> float:
    """A threshold that skips about every other step on this model's own changes."""
    changes = sorted(c for r in records for c in r.rel_l1 if c is not None)
    return 1.5 * changes[len(changes) // 2]


@pytest.mark.parametrize("variant", ALL)
def test_the_indicator_is_the_relative_l1_of_the_first_blocks_modulated_input(models, variant) -> None:
    patched = teacache(models[variant], 0.0)
    with ModelProbe(patched, tm.family(variant)) as probe:
        sample(patched, variant)
    run = last_run(patched)
    # What TeaCache measured is the relative L1 of what block 0 really modulated.
    modulated = [call.modulated[0] for call in probe.calls]
    independent = [relative_l1(a, b) for a, b in itertools.pairwise(modulated)]
    assert [r.rel_l1[0] for r in run.records[1:]] == pytest.approx(independent, rel=1e-4)


@pytest.mark.parametrize("variant", ALL)
def test_skips_exactly_the_steps_the_rule_selects_and_replays_the_cached_residual(models, variant) -> None:
    model = models[variant]
    probe_run = teacache(model, 0.0)
    sample(probe_run, variant)
    thresh = skipping_threshold(last_run(probe_run).records)

    patched = teacache(model, thresh)
    with ModelProbe(patched, tm.family(variant)) as probe:
        result = sample(patched, variant)
    run = last_run(patched)
    decisions = [r.computed for r in run.records]
    assert decisions == replay_rule(run.records, thresh, (1.0, 0.0), STEPS)
    assert 0 < decisions.count(False) < STEPS - 2, decisions
    # The block stack ran on exactly the computed calls.
    assert [c.last_block_ran for c in probe.calls] == decisions
    # A skipped call's stack output is its input plus the residual of the last computed call.
    residual = None
    for call, computed in zip(probe.calls, decisions):
        stack_in = probe.stack_input(call)
        if computed:
            residual = call.stack_out - stack_in
        else:
            assert torch.equal(call.stack_out, stack_in + residual)
    assert torch.isfinite(result).all()
    assert not torch.equal(result, sample(model, variant))


@pytest.mark.parametrize("variant", CFG_SHARED)
def test_cfg_turns_teacache_off_on_flux_and_qwen(models, variant, caplog) -> None:
    model = models[variant]
    expected = sample(model, variant, cfg=3.0)
    patched = teacache(model, 10.0)
    with caplog.at_level(logging.INFO):
        result = sample(patched, variant, cfg=3.0)
    assert torch.equal(result, expected)
    run = last_run(patched)
    assert run.calls == 0 and "cfg=3" in run.disabled
    assert len([r for r in caplog.records if "TeaCache is off for this run" in r.getMessage()]) == 1
    # At cfg 1 the same node skips.
    sample(patched, variant, cfg=1.0)
    assert last_run(patched).disabled is None and last_run(patched).steps_computed < STEPS


@pytest.mark.parametrize("variant", CFG_SEPARATE)
@pytest.mark.parametrize("path", ["batched", "split"])
def test_cfg_keeps_separate_positive_and_negative_state(models, variant, path) -> None:
    model = models[variant]
    lengths = (8, 8) if path == "batched" else tm.SPLIT_LENGTHS
    assert torch.equal(sample(teacache(model, 0.0), variant, cfg=3.0, lengths=lengths),
                       sample(model, variant, cfg=3.0, lengths=lengths))

    probe_run = teacache(model, 0.0)
    sample(probe_run, variant, cfg=3.0, lengths=lengths)
    thresh = skipping_threshold(last_run(probe_run).records)
    patched = teacache(model, thresh)
    sample(patched, variant, cfg=3.0, lengths=lengths)
    run = last_run(patched)
    branches = {key for r in run.records for key in r.branches}
    assert len(branches) == 2
    if path == "batched":
        assert all(len(r.branches) == 2 for r in run.records) and len(run.records) == STEPS
    else:
        assert all(len(r.branches) == 1 for r in run.records) and len(run.records) == 2 * STEPS
    decisions = [r.computed for r in run.records]
    assert decisions == replay_rule(run.records, thresh, (1.0, 0.0), STEPS)
    assert False in decisions


def test_start_and_end_percent_bound_where_steps_may_skip(models) -> None:
    model = models["flux"]
    patched = teacache(model, 10.0, start_percent=0.3, end_percent=0.8)
    sample(patched, "flux")
    run = last_run(patched)
    sampling = model.model.model_sampling
    start, end = sampling.percent_to_sigma(0.3), sampling.percent_to_sigma(0.8)
    sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", STEPS).tolist()
    window = [end < s <= start for s in sigmas[:-1]]
    assert 0 < sum(window) < STEPS
    assert [r.computed for r in run.records] == replay_rule(run.records, 10.0, (1.0, 0.0), STEPS,
                                                           in_window=lambda step: window[step])
    assert run.skipped_steps and all(window[s] for s in run.skipped_steps)


def test_runs_start_clean_repeatably_and_at_a_new_resolution(models) -> None:
    model = models["hunyuan_video"]
    patched = teacache(model, 0.6)
    first = sample(patched, "hunyuan_video")
    assert torch.equal(sample(patched, "hunyuan_video"), first)
    bigger = sample(patched, "hunyuan_video", size=12)
    run = last_run(patched)
    assert bigger.shape[-1] == 12 and run.records[0].rel_l1 == (None,) and run.steps_computed < STEPS


@pytest.mark.parametrize("variant", ALL)
def test_auto_names_the_member_and_picks_its_preset_saying_where_it_comes_from(models, variant, caplog) -> None:
    member, preset = tm.named(variant)
    with caplog.at_level(logging.INFO):
        patch = runs.patch_of(teacache(models[variant], 0.2, coefficients=""), "teacache")
    assert (patch.member, patch.preset.name) == (member, preset)
    assert patch.config.coefficients == PRESETS[preset].coefficients
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Apply TeaCache:")]
    assert line == f"Apply TeaCache: {member}, preset {PRESETS[preset].describe()}"
    assert ("borrowed from" in line) is (PRESETS[preset].borrowed is not None)


def test_a_failure_inside_caching_falls_back_to_computing(models, caplog) -> None:
    model = models["wan21_t2v"]
    patched = teacache(model, 10.0)
    patch = patched.model_options["transformer_options"][PATCH_KEY]

    def broken_indicator(*args: Any) -> torch.Tensor:
        raise RuntimeError("indicator exploded")

    patch.family = dataclasses.replace(patch.family, indicator=broken_indicator)
    with caplog.at_level(logging.WARNING):
        result = sample(patched, "wan21_t2v")
    assert torch.equal(result, sample(model, "wan21_t2v"))
    assert len([r for r in caplog.records if "indicator exploded" in r.getMessage()]) == 1


def test_wan22_5b_with_per_frame_timesteps(models) -> None:
    # A noise mask that keeps the first frame (as Wan22ImageToVideoLatent sets it) makes
    # ComfyUI give the 5B model one timestep per frame; TeaCache's indicator follows them.
    model = models["wan22_5b"]
    mask = torch.ones(1, 1, 3, 8, 8)
    mask[:, :, 0] = 0.0
    expected = sample(model, "wan22_5b", noise_mask=mask)
    assert torch.equal(sample(teacache(model, 0.0), "wan22_5b", noise_mask=mask), expected)
    probe_run = teacache(model, 0.0)
    with ModelProbe(probe_run, "wan") as probe:
        sample(probe_run, "wan22_5b", noise_mask=mask)
    assert probe.calls[0].modulated[0].shape[1] > 1  # one embedding per token: per-frame timesteps
    patched = teacache(model, skipping_threshold(last_run(probe_run).records))
    result = sample(patched, "wan22_5b", noise_mask=mask)
    assert 0 < last_run(patched).steps_computed < STEPS
    assert torch.equal(result[:, :, 0], expected[:, :, 0])  # the kept frame stays exactly as given


def test_wan_ret_mode_measures_e0_warms_up_five_steps_and_does_not_force_the_last(models) -> None:
    model = models["wan21_t2v"]
    patched = teacache(model, 0.0, model_type="wan2.1_t2v_1.3B_ret")
    captured: list[torch.Tensor] = []
    block0 = model.model.diffusion_model.blocks[0]
    handle = block0.register_forward_pre_hook(lambda m, a, k: captured.append(k["e"].clone()), with_kwargs=True)
    try:
        sample(patched, "wan21_t2v")
    finally:
        handle.remove()
    independent = [relative_l1(a, b) for a, b in itertools.pairwise(captured)]
    assert [r.rel_l1[0] for r in last_run(patched).records[1:]] == pytest.approx(independent, rel=1e-4)

    thresh = 10.0
    patched = teacache(model, thresh, model_type="wan2.1_t2v_1.3B_ret")
    sample(patched, "wan21_t2v")
    run = last_run(patched)
    decisions = [r.computed for r in run.records]
    assert decisions == replay_rule(run.records, thresh, (1.0, 0.0), STEPS, warmup=5, force_last=False)
    assert decisions[:5] == [True] * 5 and decisions[-1] is False


def test_one_step_and_multi_evaluation_samplers_count_steps_from_the_schedule(models) -> None:
    model = models["flux"]
    one = teacache(model, 10.0)
    assert torch.equal(sample(one, "flux", steps=1), sample(model, "flux", steps=1))
    assert last_run(one).steps_computed == last_run(one).total_steps == 1

    heun = teacache(model, 0.8)
    latent = tm.latent("flux")["samples"]
    noise = comfy.sample.prepare_noise(latent, 0)
    pos, neg = tm.conditioning("flux", seed=1), tm.conditioning("flux", seed=2)
    comfy.sample.sample(heun, noise, 6, 1.0, "heun", "simple", pos, neg, latent, disable_pbar=True, seed=0)
    run = last_run(heun)
    steps = [r.step for r in run.records]
    # Heun: 11 calls over 6 steps; a correction call at sigma[i + 1] counts in step i + 1.
    assert steps == sorted(steps) and set(steps) == set(range(6)) and len(steps) == 11
    assert [r.computed for r in run.records] == replay_rule(run.records, 0.8, (1.0, 0.0), 6)
