"""What both nodes promise on every family, tested once per method: off is exact, the input MODEL is
never touched, an unsupported model passes through, bad input is named, Wan 2.2's experts start clean.

The rules that differ (which steps TeaCache skips, which blocks Cache-DiT skips) are tested in
test_teacache_models.py and test_cachedit_models.py.
"""
from __future__ import annotations

import logging
from typing import Any

import comfy.model_patcher
import comfy.sample
import comfy.supported_models
import pytest
import tiny_models as tm
import torch
from dit_cache.nodes.report_node import run_reports
from runs import EAGER, METHODS, NODES, OFF, apply, last_run, patch_of, sample

STEPS = 8


@pytest.mark.parametrize("variant", tm.VARIANTS)
@pytest.mark.parametrize("method", METHODS)
def test_off_is_bit_identical_and_every_step_still_decides(models, method, variant) -> None:
    model = models[variant]
    patched = apply(model, method, **OFF[method])
    assert torch.equal(sample(patched, variant, steps=STEPS), sample(model, variant, steps=STEPS))
    run = last_run(patched, method)
    # The patched path really ran: every call went through the decision, and none was skipped.
    assert [r.step for r in run.records] == list(range(STEPS)) and all(r.computed for r in run.records)
    assert patch_of(patched, method).member == tm.named(variant)[0]  # the member, told apart by its config


@pytest.mark.parametrize("method", METHODS)
def test_the_run_summary_and_the_cache_report_name_the_member(models, method, caplog) -> None:
    member, _ = tm.named("flux2")
    patched = apply(models["flux2"], method, **EAGER[method])
    with caplog.at_level(logging.INFO):
        sample(patched, "flux2")
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(("TeaCache [", "Cache-DiT ["))]
    assert line.startswith(f"{patch_of(patched, method).method} [flux, ") and line.endswith(f" ({member})")
    (report,) = run_reports(patched)
    assert report["member"] == member


@pytest.mark.parametrize("method", METHODS)
def test_the_input_model_is_never_modified_and_a_second_node_replaces_the_first(models, method) -> None:
    model = models["flux"]
    before = (repr(model.model_options), repr(model.wrappers))
    patched = apply(model, method, **EAGER[method])
    assert (repr(model.model_options), repr(model.wrappers)) == before
    assert patch_of(patched, method).config is not None
    twice = apply(patched, method, **OFF[method])
    key = patch_of(twice, method).key
    assert len(twice.wrappers["outer_sample"][key]) == 1
    hooks = twice.model_options["transformer_options"]["patches_replace"]["dit"]
    assert all(hook.previous is None for hook in hooks.values())
    assert torch.equal(sample(twice, "flux"), sample(model, "flux"))


def _vace() -> Any:
    """A Wan VACE model: a WanModel subclass with a forward of its own, which the pack must not match."""
    config = comfy.supported_models.WAN21_Vace(
        {**tm.unet_config("wan21_t2v"), "model_type": "vace", "vace_in_dim": 96, "vace_layers": 1}
    )
    config.set_inference_dtype(torch.float32, None)
    return comfy.model_patcher.ModelPatcher(config.get_model({}), load_device="cpu", offload_device="cpu")


@pytest.mark.parametrize(("model", "name"), [("lumina2", "NextDiT"), ("vace", "VaceWanModel")])
@pytest.mark.parametrize("method", METHODS)
def test_an_unsupported_model_passes_through_with_one_warning_naming_its_class(method, model, name, caplog) -> None:
    unsupported = _vace() if model == "vace" else tm.load_model(model)
    with caplog.at_level(logging.WARNING):
        (out,) = NODES[method].execute(unsupported)
    assert out is unsupported
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("dit_cache")]
    assert len(warnings) == 1 and f"{name} is not supported" in warnings[0]


@pytest.mark.parametrize(
    ("method", "inputs", "named"),
    [
        ("teacache", {"rel_l1_thresh": -0.1}, "rel_l1_thresh"),
        ("teacache", {"start_percent": 0.9, "end_percent": 0.1}, "start_percent"),
        ("teacache", {"coefficients": "1, two"}, "coefficients"),
        ("teacache", {"cache_device": "gpu7"}, "cache_device"),
        ("teacache", {"model_type": "sdxl"}, "model_type"),
        ("cachedit", {"residual_diff_threshold": -0.1}, "residual_diff_threshold"),
        ("cachedit", {"Fn_compute_blocks": 0}, "Fn_compute_blocks"),
        ("cachedit", {"taylorseer_order": 7}, "taylorseer_order"),
        ("cachedit", {"scm_preset": "custom", "scm_compute_bins": "6, x"}, "scm_compute_bins"),
        ("cachedit", {"scm_preset": "custom"}, "scm"),
        ("cachedit", {"scm_policy": "sometimes"}, "scm_policy"),
    ],
)
def test_invalid_inputs_are_rejected_naming_the_input(method, inputs, named) -> None:
    verdict = NODES[method].validate_inputs(**inputs)
    assert isinstance(verdict, str) and named in verdict, verdict
    assert NODES[method].validate_inputs() is True


@pytest.mark.parametrize("method", METHODS)
def test_wan22_experts_are_patched_independently_in_a_split_schedule(models, method) -> None:
    """As ComfyUI's Wan 2.2 template: KSamplerAdvanced 0-4 on the high-noise expert keeps the noise, 4-8 on the
    low-noise expert finishes. Each expert's run has its own 4 steps and starts clean."""
    high, low = models["wan22_high"], models["wan22_low"]

    def two_pass(first: Any, second: Any) -> torch.Tensor:
        latent = tm.latent("wan22_high")["samples"]
        noise = comfy.sample.prepare_noise(latent, 0)
        pos, neg = tm.conditioning("wan22_high", seed=1), tm.conditioning("wan22_high", seed=2)
        mid = comfy.sample.sample(first, noise, STEPS, 1.0, "euler", "simple", pos, neg, latent,
                                  start_step=0, last_step=4, force_full_denoise=False, disable_pbar=True, seed=0)
        return comfy.sample.sample(second, noise, STEPS, 1.0, "euler", "simple", pos, neg, mid, disable_noise=True,
                                   start_step=4, last_step=STEPS, force_full_denoise=True, disable_pbar=True, seed=0)

    off = OFF[method]
    assert torch.equal(two_pass(apply(high, method, **off), apply(low, method, **off)), two_pass(high, low))
    high_patched, low_patched = apply(high, method, **EAGER[method]), apply(low, method, **off)
    two_pass(high_patched, low_patched)
    high_run, low_run = last_run(high_patched, method), last_run(low_patched, method)
    assert high_run.total_steps == low_run.total_steps == 4
    assert [r.step for r in high_run.records] == [0, 1, 2, 3] == [r.step for r in low_run.records]
    assert high_run.records[0].computed and high_run.skipped_steps
    assert all(r.computed for r in low_run.records)
