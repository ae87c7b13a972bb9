"""Calibrate TeaCache, target speedups and the report nodes on tiny models, inside the real ComfyUI."""
from __future__ import annotations

import dataclasses
import json
import math
from itertools import pairwise
from pathlib import Path
from typing import Any

import comfy.sample
import comfy.sd
import folder_paths
import numpy as np
import pytest
import tiny_models as tm
import torch
from dit_cache.caching.calibration import FN_LOOKBACK, RecordedCall, RecordedRun, samples
from dit_cache.caching.target_speedup import dbcache_counts
from dit_cache.caching.user_presets import PresetFileError, load
from dit_cache.model_patches.calibration_patch import CalibrationPatch
from dit_cache.model_patches.sampling_hooks import installed
from dit_cache.nodes import report_images as ri
from dit_cache.nodes.cachedit_node import ApplyCacheDiT
from dit_cache.nodes.calibration_node import CalibrateTeaCache, CalibrationReport
from dit_cache.nodes.presets import presets_directory
from dit_cache.nodes.report_node import CacheReport
from dit_cache.nodes.teacache_node import ApplyTeaCache
from probes import ModelProbe, relative_l1
from runs import patch_of, sample

STEPS = 8


@pytest.fixture(autouse=True)
def user_directory(tmp_path: Path) -> Any:
    """Presets go to a fresh ComfyUI user directory per test."""
    previous = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_user_directory(previous)



def calibrate(model: Any, name: str = "tiny", model_type: str = "auto", append: bool = True) -> Any:
    (patched,) = CalibrateTeaCache.execute(model, preset_name=name, model_type=model_type, append=append)
    return patched


def test_calibration_skips_nothing_and_records_what_teacache_and_the_output_measure(models) -> None:
    model = models["flux"]
    expected = sample(model, "flux")
    patched = calibrate(model)
    with ModelProbe(patched, "flux") as probe:
        result = sample(patched, "flux")
    assert torch.equal(result, expected)  # only observed

    user = load(presets_directory() / "tiny.json")
    (run,) = user.runs
    assert run.total_steps == STEPS and [c.step for c in run.calls] == list(range(STEPS))
    modulated = [call.modulated[0] for call in probe.calls]
    outputs = [call.stack_out for call in probe.calls]  # final layer input: not the output, see below
    assert [c.indicator[0] for c in run.calls[1:]] == pytest.approx(
        [relative_l1(a, b) for a, b in pairwise(modulated)], rel=1e-4)
    assert run.calls[0].indicator == (None,) and run.calls[0].output == (None,)
    assert len(outputs) == STEPS
    # Fn residual diffs look back over up to 6 earlier calls of the branch.
    assert [len(c.fn_diffs[0]) for c in run.calls] == [min(i, 6) for i in range(STEPS)]
    # The fit is the least-squares polynomial of the saved samples.
    x, y = samples(user.runs)
    assert len(x) == STEPS - 1 == user.fit.samples
    assert user.preset.coefficients == pytest.approx(tuple(np.polyfit(x, y, 4)))
    assert user.preset.name == "user:tiny" and user.preset.family == "flux"


def test_output_change_is_the_diffusion_models_output(models) -> None:
    model = models["wan21_t2v"]
    patched = calibrate(model, "out")
    captured: list[torch.Tensor] = []
    handle = patched.model.diffusion_model.register_forward_hook(lambda m, a, out: captured.append(out.clone()))
    try:
        sample(patched, "wan21_t2v")
    finally:
        handle.remove()
    (run,) = load(presets_directory() / "out.json").runs
    assert [c.output[0] for c in run.calls[1:]] == pytest.approx(
        [relative_l1(a, b) for a, b in pairwise(captured)], rel=1e-4)


def test_runs_accumulate_into_one_fit_and_append_off_starts_afresh(models) -> None:
    model = models["wan21_t2v"]
    patched = calibrate(model, "acc")
    sample(patched, "wan21_t2v", seed=0)
    sample(patched, "wan21_t2v", seed=1, cfg=3.0, lengths=tm.SPLIT_LENGTHS)  # two branches, separate calls
    user = load(presets_directory() / "acc.json")
    assert len(user.runs) == 2 and user.fit.samples == (STEPS - 1) * 3
    assert {b for c in user.runs[1].calls for b in c.branches} == {0, 1}
    fresh = calibrate(model, "acc", append=False)
    sample(fresh, "wan21_t2v")
    assert len(load(presets_directory() / "acc.json").runs) == 1


def test_apply_teacache_lists_and_uses_a_calibrated_preset(models, caplog) -> None:
    model = models["wan21_t2v"]
    sample(calibrate(model, "wan_tiny"), "wan21_t2v")
    choices = ApplyTeaCache.INPUT_TYPES()["required"]["model_type"][1]["options"]
    assert "user:wan_tiny" in choices
    assert ApplyTeaCache.validate_inputs(model_type="user:wan_tiny", rel_l1_thresh=0.2, target_speedup=2.0) is True
    assert "user:nope" in ApplyTeaCache.validate_inputs(model_type="user:nope", rel_l1_thresh=0.2)
    assert "target_speedup" in ApplyTeaCache.validate_inputs(model_type="auto", rel_l1_thresh=0.2, target_speedup=0.5)
    user = load(presets_directory() / "wan_tiny.json")
    (patched,) = ApplyTeaCache.execute(model, model_type="user:wan_tiny", rel_l1_thresh=0.3)
    config = patch_of(patched, "teacache").config
    assert config.coefficients == user.preset.coefficients and config.rel_l1_thresh == 0.3


def test_target_speedup_lands_on_the_replayed_prediction(models) -> None:
    """Wan's indicator (the time embedding) does not depend on what was skipped: the replay is exact."""
    model = models["wan21_t2v"]
    sample(calibrate(model, "target"), "wan21_t2v")
    (patched,) = ApplyTeaCache.execute(model, model_type="user:target", rel_l1_thresh=0.0, target_speedup=2.0)
    patch = patch_of(patched, "teacache")
    sample(patched, "wan21_t2v")
    run = patch.last_run
    assert patch.config.rel_l1_thresh > 0
    assert run.calls / run.calls_computed >= 2.0
    # The smallest such threshold: a hair lower no longer reaches the target on the same run.
    (lower,) = ApplyTeaCache.execute(model, model_type="user:target", rel_l1_thresh=patch.config.rel_l1_thresh * 0.999)
    sample(lower, "wan21_t2v")
    lower_run = patch_of(lower, "teacache").last_run
    assert lower_run.calls / lower_run.calls_computed < 2.0


def test_target_without_calibration_says_so_and_uses_the_recommended_threshold(models, caplog) -> None:
    (patched,) = ApplyTeaCache.execute(models["flux"], model_type="flux", rel_l1_thresh=0.1, target_speedup=2.0)
    assert patch_of(patched, "teacache").config.rel_l1_thresh == 0.4
    assert "has no calibration runs" in caplog.text
    (cached,) = ApplyCacheDiT.execute(models["flux"], target_speedup=2.0, residual_diff_threshold=0.3)
    assert patch_of(cached, "cachedit").config.residual_diff_threshold == 0.3
    assert "no calibration is chosen" in caplog.text


def test_cachedit_target_speedup_from_a_calibration(models) -> None:
    model = models["wan21_t2v"]
    sample(calibrate(model, "dbc"), "wan21_t2v")
    settings = {"max_warmup_steps": 2, "max_continuous_cached_steps": 2}
    (patched,) = ApplyCacheDiT.execute(model, target_speedup=1.6, calibration="user:dbc", **settings)
    patch = patch_of(patched, "cachedit")
    assert 0 < patch.config.residual_diff_threshold < 1
    sample(patched, "wan21_t2v")
    run = patch.last_run
    achieved = run.calls / run.calls_computed
    assert achieved >= 1.6 - 0.25  # the replay compares Fn residuals of the uncached run: close, not exact
    assert "missing.json" in ApplyCacheDiT.validate_inputs(calibration="user:missing")


def _recorded(summary: Any) -> RecordedRun:
    """A live Cache-DiT run's record as a calibration run: each branch's diff where the replay will look it up.

    The live gate compared each call's probe with the one its branch stored last (at its last
    computed call), so that is where the diff goes; the other look-backs were never measured.
    """
    calls, count, stored = [], {}, {}
    for record in summary.records:
        fn_diffs = []
        for branch, diff in zip(record.branches, record.rel_l1, strict=True):
            index = count.get(branch, 0)
            back = index - stored.get(branch, index)
            diffs = [math.inf] * FN_LOOKBACK
            if diff is not None and 0 < back <= FN_LOOKBACK:
                diffs[back - 1] = diff
            fn_diffs.append(tuple(diffs))
            count[branch] = index + 1
            if record.computed:
                stored[branch] = index
        none = (None,) * len(record.branches)
        calls.append(RecordedCall(record.step, 1.0, record.branches, none, none, tuple(fn_diffs)))
    return RecordedRun(summary.total_steps, tuple(calls))


def test_the_target_speedup_replay_decides_as_the_live_run_on_its_own_record(models) -> None:
    """One decision site: replaying a live run's recorded diffs through dbcache_counts gives its decisions.

    Wan at cfg 5 with both CFG branches in one call, so the all-branches rule is in play.
    """
    model = models["wan21_t2v"]
    settings = {"max_warmup_steps": 1, "max_continuous_cached_steps": 2}
    (probe,) = ApplyCacheDiT.execute(model, residual_diff_threshold=0.999, **settings)
    sample(probe, "wan21_t2v", cfg=5.0)
    diffs = sorted(d for r in patch_of(probe, "cachedit").last_run.records
                   for d in r.rel_l1 if d is not None)
    (patched,) = ApplyCacheDiT.execute(model, residual_diff_threshold=diffs[len(diffs) // 2], **settings)
    patch = patch_of(patched, "cachedit")
    sample(patched, "wan21_t2v", cfg=5.0)
    live = patch.last_run
    assert {len(r.branches) for r in live.records} == {2} and 0 < live.calls_computed < live.calls
    threshold = patch.config.residual_diff_threshold
    split = [r for r in live.records if any(d is not None and 0 <= d < threshold for d in r.rel_l1)
             and any(d is not None and d >= threshold for d in r.rel_l1)]
    assert split and all(r.computed for r in split)  # one branch alone would have cached: all must agree
    assert dbcache_counts([_recorded(live)], patch.config) == (live.calls_computed, live.calls)


def test_calibration_measures_the_first_block_residual_as_dbcache_gates_it_in_the_models_dtype(tmp_path) -> None:
    """On a model that computes in bf16, the recorded Fn diffs are exactly the ones DBCache's gate compares."""
    path = tmp_path / "tiny-wan21_t2v.safetensors"
    tm.write_checkpoint("wan21_t2v", path)
    model = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.bfloat16})
    model.model.manual_cast_dtype = None  # compute in bf16, as ComfyUI does on a GPU (on a CPU it casts to fp32)
    calibrated = calibrate(model, "bf16")
    sample(calibrated, "wan21_t2v")
    recorded = [call.fn_diffs[0][0] for call in installed(calibrated, CalibrationPatch).last_preset.runs[-1].calls
                if call.fn_diffs[0]]
    # A threshold no diff is under: every step computes (the same trajectory) and every diff is measured.
    (measuring,) = ApplyCacheDiT.execute(model, residual_diff_threshold=1e-9, max_warmup_steps=0)
    sample(measuring, "wan21_t2v")
    gated = [r.rel_l1[0] for r in patch_of(measuring, "cachedit").last_run.records if r.rel_l1[0] is not None]
    assert len(recorded) == STEPS - 1 and recorded == gated


def test_malformed_preset_names_the_file(models) -> None:
    directory = presets_directory()
    directory.mkdir(parents=True)
    (directory / "broken.json").write_text("{not json")
    message = ApplyTeaCache.validate_inputs(model_type="user:broken", rel_l1_thresh=0.2)
    assert str(directory / "broken.json") in message
    with pytest.raises(PresetFileError, match="broken.json"):
        calibrate(models["flux"], "broken")
    (directory / "partial.json").write_text(json.dumps({"name": "partial", "family": "flux"}))
    assert "missing key 'coefficients'" in ApplyTeaCache.validate_inputs(model_type="user:partial", rel_l1_thresh=0.2)


def test_cache_report_shows_the_runs_timeline_signal_and_totals(models) -> None:
    model = models["wan21_t2v"]
    (patched,) = ApplyTeaCache.execute(model, model_type="wan2.1_t2v_1.3B", rel_l1_thresh=1.0, coefficients="1, 0")
    latent = {"samples": sample(patched, "wan21_t2v")}
    image, text = CacheReport.execute(patched, latent)
    (data,) = json.loads(text)["runs"]
    run = patch_of(patched, "teacache").last_run
    assert [c["computed"] for c in data["per_call"]] == [r.computed for r in run.records]
    assert data["calls_computed"] == run.calls_computed and data["threshold"] == 1.0
    assert False in [r.computed for r in run.records]
    pixels = (image[0].numpy() * 255).round().astype(int)
    layout = ri.ReportLayout(STEPS, 1)
    for record in run.records:
        x0, y0, x1, y1 = layout.cell(record.step, 0)
        assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == (ri.COMPUTED if record.computed else ri.CACHED)
    top = ri.chart_scale(data)
    for record in run.records:
        if record.signal[0] is not None:
            x, y = layout.chart_point(record.step, record.signal[0], top)
            assert tuple(pixels[y, x]) == ri.BRANCH_COLORS[0]


def test_calibration_report_plots_the_samples_and_the_curve(models) -> None:
    model = models["flux"]
    patched = calibrate(model, "plot")
    latent = {"samples": sample(patched, "flux")}
    image, text = CalibrationReport.execute(patched, latent)
    data = json.loads(text)
    assert data["runs"] == 1 and data["fit"]["samples"] == STEPS - 1
    user = load(presets_directory() / "plot.json")
    x, y = samples(user.runs)
    pixels = (image[0].numpy() * 255).round().astype(int)
    layout = ri.FitLayout.for_samples(x, y)
    for a, b in zip(x, y, strict=True):
        px, py = layout.point(a, b)
        assert tuple(pixels[py, px]) in (ri.SAMPLES, ri.THRESHOLD)  # a sample dot (or the curve over it)
    with pytest.raises(ValueError, match="does not come from Calibrate TeaCache"):
        CalibrationReport.execute(model, latent)


def test_a_failure_while_observing_never_changes_the_image_and_saves_nothing(models, caplog) -> None:
    model = models["flux"]
    patched = calibrate(model, "failing")
    patch = installed(patched, CalibrationPatch)

    def broken(*args: Any) -> torch.Tensor:
        raise RuntimeError("indicator exploded")

    patch.family = dataclasses.replace(patch.family, indicator=broken)
    assert torch.equal(sample(patched, "flux"), sample(model, "flux"))
    assert not (presets_directory() / "failing.json").exists()
    assert "indicator exploded" in caplog.text and "this run was not saved" in patch.last_error
    with pytest.raises(ValueError, match="this run was not saved"):
        CalibrationReport.execute(patched, None)
