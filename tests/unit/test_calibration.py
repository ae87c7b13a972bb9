"""Calibration logic without a model: the fit, preset files, the target-speedup search, the report images."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dit_cache.caching import user_presets as up
from dit_cache.caching.calibration import RecordedCall, RecordedRun, fit_rescale, fit_runs
from dit_cache.caching.dbcache import DBCacheBranch, DBCacheConfig
from dit_cache.caching.target_speedup import (
    SigmaWindow,
    dbcache_counts,
    dbcache_threshold,
    speedup,
    teacache_counts,
    teacache_threshold,
)
from dit_cache.caching.teacache import TeaCacheConfig, relative_l1
from dit_cache.caching.teacache_presets import PRESETS
from probes import replay_rule

TRUE = (5.0, -4.0, 2.0, 0.5, 0.01)


def synthetic_run(rng: np.random.Generator, steps: int = 20, branches: int = 1, noise: float = 0.0) -> RecordedRun:
    calls = []
    for step in range(steps):
        x = [None if step == 0 else float(rng.uniform(0.02, 0.6)) for _ in range(branches)]
        y = [None if v is None else float(np.polyval(TRUE, v) + rng.normal(0, noise)) for v in x]
        calls.append(RecordedCall(step, 1.0 - step / steps, tuple(range(branches)), tuple(x), tuple(y)))
    return RecordedRun(steps, tuple(calls))


def test_fit_recovers_known_coefficients() -> None:
    rng = np.random.default_rng(0)
    exact = fit_runs([synthetic_run(rng), synthetic_run(rng, branches=2)])
    assert exact.coefficients == pytest.approx(TRUE, abs=1e-6) and exact.r2 == pytest.approx(1.0)
    assert exact.samples == 19 * 3
    noisy = fit_runs([synthetic_run(rng, steps=200, noise=0.002)])
    assert noisy.coefficients == pytest.approx(TRUE, abs=0.3)
    grid = np.linspace(0.02, 0.6, 50)
    assert np.abs(np.polyval(noisy.coefficients, grid) - np.polyval(TRUE, grid)).max() < 0.005
    assert 0.99 < noisy.r2 < 1.0


def test_r2_is_one_minus_residual_over_total_variance() -> None:
    x = np.linspace(0, 1, 30)
    y = np.sin(12 * x)  # not a quartic: R² visibly below 1
    fit = fit_rescale(x, y)
    predicted = np.polyval(fit.coefficients, x)
    assert fit.r2 == pytest.approx(1 - ((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    assert fit.r2 < 0.99
    with pytest.raises(ValueError, match="more than 4 samples"):
        fit_rescale(x[:4], y[:4])


def test_preset_round_trip(tmp_path) -> None:
    runs = [synthetic_run(np.random.default_rng(2), branches=2)]
    user = up.calibrated("wan22_mine", PRESETS["wan2.1_t2v_1.3B_ret"], runs, "WanModel (WAN22_T2V)")
    path = up.save(tmp_path, user)
    assert path == tmp_path / "wan22_mine.json" and up.names(tmp_path) == ["wan22_mine"]
    data = json.loads(path.read_text())
    assert data["coefficients"] == list(user.preset.coefficients) and data["fit"]["samples"] == 38
    loaded = up.load(path)
    assert loaded == user
    assert loaded.preset.indicator == "e0" and loaded.preset.warmup_steps == 5 and not loaded.preset.force_last_step
    # A hand-written preset needs only name, family and coefficients.
    (tmp_path / "shared.json").write_text(json.dumps({"name": "shared", "family": "flux", "coefficients": [1, 0]}))
    shared = up.load(tmp_path / "shared.json")
    assert shared.preset.coefficients == (1.0, 0.0) and shared.runs == () and shared.fit is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{oops", "Expecting property name"),
        ("[1, 2]", "expected a JSON object"),
        ('{"name": "x", "family": "flux"}', "missing key 'coefficients'"),
        ('{"name": "x", "family": "sdxl", "coefficients": [1]}', "unknown family 'sdxl'"),
        ('{"name": "x", "family": "flux", "coefficients": [NaN]}', "finite"),
        ('{"name": "../x", "family": "flux", "coefficients": [1]}', "preset_name must be"),
    ],
)
def test_malformed_preset_error_names_the_file(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(up.PresetFileError) as error:
        up.load(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_teacache_replay_is_the_rule_and_the_search_finds_the_smallest_threshold() -> None:
    rng = np.random.default_rng(3)
    runs = [synthetic_run(rng, branches=2), synthetic_run(rng)]
    config = TeaCacheConfig(0.5, TRUE)
    computed, total = teacache_counts(runs, config, SigmaWindow())
    expected = sum(
        sum(replay_rule([SimpleNamespace(step=c.step, branches=c.branches, rel_l1=c.indicator) for c in run.calls],
                        0.5, TRUE, run.total_steps))
        for run in runs
    )
    assert (computed, total) == (expected, 40)  # calls, whatever branches they carry

    choice = teacache_threshold(runs, config, 2.0)
    assert choice.reachable and choice.predicted >= 2.0

    def at(threshold: float) -> float:
        return speedup(*teacache_counts(runs, TeaCacheConfig(threshold, TRUE), SigmaWindow()))

    assert at(choice.threshold) == choice.predicted and at(choice.threshold * 0.999) < 2.0
    # A window keeps every call outside it computing.
    windowed = teacache_counts(runs, TeaCacheConfig(10.0, TRUE), SigmaWindow(0.8, 0.3))
    outside = sum(not 0.3 < c.sigma <= 0.8 for run in runs for c in run.calls)
    assert windowed[0] >= outside


def test_unreachable_target_uses_the_largest_speedup_and_says_so() -> None:
    runs = [synthetic_run(np.random.default_rng(4), steps=4)]  # first and last steps always compute
    choice = teacache_threshold(runs, TeaCacheConfig(0.0, TRUE), 5.0)
    assert not choice.reachable and choice.predicted == 2.0 and "target 5.00x" in choice.describe()
    with pytest.raises(ValueError, match="target_speedup"):
        teacache_threshold(runs, TeaCacheConfig(0.0, TRUE), 0.5)


def test_dbcache_replay_matches_the_engine_on_real_tensors() -> None:
    """Diffs recorded against the last six calls replay exactly what DBCacheBranch decides on the tensors."""
    generator = torch.Generator().manual_seed(5)
    residuals = [torch.randn(64, generator=generator) + 3.0]
    for _ in range(19):
        residuals.append(residuals[-1] + 0.15 * torch.randn(64, generator=generator))
    calls = tuple(
        RecordedCall(step, 1.0, (0,), (None,), (None,),
                        ((tuple(relative_l1(residuals[step - k], residuals[step]).item()
                                for k in range(1, min(step, 6) + 1))),))
        for step in range(20)
    )
    run = RecordedRun(20, calls)
    for threshold in (0.02, 0.05, 0.08, 0.12):
        config = DBCacheConfig(residual_diff_threshold=threshold, max_warmup_steps=2, max_continuous_cached_steps=3)
        engine = DBCacheBranch(config, 20)
        computed = 0
        for step, residual in enumerate(residuals):
            if engine.can_cache(step, residual):
                engine.mark_cached(step)
            else:
                engine.store(step, residual, (residual, None), (residual, None))
                computed += 1
        assert dbcache_counts([run], config) == (computed, 20)
    choice = dbcache_threshold([run], DBCacheConfig(max_warmup_steps=2), 1.5)
    assert choice.reachable and choice.predicted >= 1.5
    with pytest.raises(ValueError, match="Fn_compute_blocks=1"):
        dbcache_counts([run], DBCacheConfig(Fn_compute_blocks=2))
