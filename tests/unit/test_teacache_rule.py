"""TeaCache's decision rule, schedule and settings, without a model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from dit_cache.caching.schedule import StepSchedule
from dit_cache.caching.teacache import TeaCacheConfig, TeaCacheRun, relative_l1, rescale
from dit_cache.caching.teacache_presets import PRESETS, parse_coefficients

IDENTITY = (1.0, 0.0)  # rescale(x) = x


def indicators(changes: list[float]) -> list[torch.Tensor]:
    """Indicator tensors whose consecutive relative L1 changes are exactly `changes`."""
    values = [1.0]
    for c in changes:
        values.append(values[-1] * (1.0 + c))
    return [torch.full((1, 4), v, dtype=torch.float64) for v in values]


def run_rule(changes: list[float], thresh: float, total: int | None = None, **config: object) -> list[bool]:
    run = TeaCacheRun(TeaCacheConfig(thresh, IDENTITY, **config), total or len(changes) + 1)
    decisions = []
    for step, ind in enumerate(indicators(changes)):
        computed = run.decide(["c"], [ind], step, in_window=True)
        if computed:
            run.store(["c"], torch.zeros(1, 4))
        decisions.append(computed)
    return decisions


def test_accumulates_until_threshold_then_resets() -> None:
    # steps:        0     1    2    3    4    5    6    7
    changes = [0.1, 0.1, 0.15, 0.05, 0.3, 0.1, 0.1]
    # 0 first; 1: 0.1 skip; 2: 0.2 skip; 3: 0.35 >= 0.3 compute; 4: 0.05 skip; 5: 0.35 compute;
    # 6: 0.1 skip; 7 last.
    assert run_rule(changes, 0.3) == [True, False, False, True, False, True, False, True]


def test_zero_threshold_never_skips_even_with_negative_rescale() -> None:
    run = TeaCacheRun(TeaCacheConfig(0.0, (-5.0,)), 6)  # rescale always -5: the sum never rises
    inds = indicators([0.01] * 5)
    for step, ind in enumerate(inds):
        assert run.decide(["c"], [ind], step, True)
        run.store(["c"], torch.zeros(1, 4))


def test_warmup_and_last_step_rules() -> None:
    changes = [0.0] * 9
    assert run_rule(changes, 1.0) == [True] + [False] * 8 + [True]
    assert run_rule(changes, 1.0, warmup_steps=5, force_last_step=False) == [True] * 5 + [False] * 5


def test_outside_window_computes_and_restarts_accumulation() -> None:
    run = TeaCacheRun(TeaCacheConfig(0.25, IDENTITY), 10)
    got = []
    for step, ind in enumerate(indicators([0.1] * 6)):
        computed = run.decide(["c"], [ind], step, in_window=step != 2)
        run.store(["c"], torch.zeros(1, 4))
        got.append(computed)
    assert got == [True, False, True, False, False, True, False]


def test_branches_keep_separate_states_and_a_batch_computes_when_any_must() -> None:
    run = TeaCacheRun(TeaCacheConfig(0.25, IDENTITY), 20)
    pos, neg = indicators([0.1] * 4), indicators([0.3] * 4)
    # Separate calls: each branch on its own.
    assert run.decide(["p"], [pos[0]], 0, True) and run.decide(["n"], [neg[0]], 0, True)
    run.store(["p"], torch.zeros(1, 4))
    run.store(["n"], torch.zeros(1, 4))
    assert not run.decide(["p"], [pos[1]], 1, True)
    assert run.decide(["n"], [neg[1]], 1, True)  # 0.3 >= 0.25
    # A batched call: p alone would skip (0.2), n must compute, so both compute and restart.
    assert run.decide(["p", "n"], [pos[2], neg[2]], 2, True)
    assert run.branches["p"].accumulated == 0.0 and run.branches["n"].accumulated == 0.0
    assert run.records[-1].rel_l1 == pytest.approx((0.1, 0.3))


def test_residuals_are_kept_per_branch_and_applied_in_call_order() -> None:
    run = TeaCacheRun(TeaCacheConfig(0.5, IDENTITY, offload_device="cpu"), 5)
    run.store(["a", "b"], torch.tensor([[1.0], [2.0]]))
    assert run.branches["a"].residual.device.type == "cpu"
    out = run.apply(["b", "a"], torch.zeros(2, 1))
    assert out.flatten().tolist() == [2.0, 1.0]


def test_non_finite_change_computes() -> None:
    run = TeaCacheRun(TeaCacheConfig(0.5, IDENTITY), 5)
    run.decide(["c"], [torch.zeros(1, 2)], 0, True)
    run.store(["c"], torch.zeros(1, 2))
    assert run.decide(["c"], [torch.ones(1, 2)], 1, True)  # 1 / 0: compute, never skip on NaN/inf


def test_rescale_is_numpy_poly1d() -> None:
    for preset in PRESETS.values():
        for x in (0.0, 0.03, 0.2, 0.7):
            assert rescale(preset.coefficients, x) == pytest.approx(np.poly1d(preset.coefficients)(x), rel=1e-12)


def test_relative_l1() -> None:
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([1.5, -1.0])
    assert relative_l1(a, b).item() == pytest.approx((0.5 + 1.0) / 2 / 1.5)


def test_step_schedule_maps_intermediate_sigmas_to_their_step() -> None:
    schedule = StepSchedule([1.0, 0.75, 0.5, 0.25, 0.0], start_sigma=0.8, end_sigma=0.3)
    assert schedule.total_steps == 4
    assert [schedule.step_index(s) for s in (1.0, 0.9, 0.75, 0.6, 0.5, 0.25, 0.1)] == [0, 0, 1, 1, 2, 3, 3]
    assert [schedule.in_window(s) for s in (1.0, 0.75, 0.5, 0.3, 0.25)] == [False, True, True, False, False]
    assert schedule.step_index(float(torch.tensor(0.75, dtype=torch.float32))) == 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rel_l1_thresh": -0.1}, "rel_l1_thresh must be >= 0"),
        ({"rel_l1_thresh": math.nan}, "rel_l1_thresh must be >= 0"),
        ({"start_percent": 0.8, "end_percent": 0.2}, "start_percent and end_percent"),
        ({"end_percent": 1.5}, "start_percent and end_percent"),
        ({"coefficients": ()}, "coefficients"),
    ],
)
def test_config_rejects_bad_settings(settings: dict, message: str) -> None:
    values = {"rel_l1_thresh": 0.2, "coefficients": IDENTITY} | settings
    with pytest.raises(ValueError, match=message):
        TeaCacheConfig(**values)


def test_parse_coefficients() -> None:
    assert parse_coefficients("") is None
    assert parse_coefficients(" [1, -2.5e2, 3] ") == (1.0, -250.0, 3.0)
    for bad in ("1, x", "nan", "1,,inf"):
        with pytest.raises(ValueError, match="coefficients: cannot parse"):
            parse_coefficients(bad)


def test_presets_are_complete_and_honest() -> None:
    for preset in PRESETS.values():
        assert len(preset.coefficients) == 5 and preset.recommended_thresh > 0
        if preset.borrowed:
            assert PRESETS[preset.borrowed].coefficients == preset.coefficients
    borrowed = {p.name for p in PRESETS.values() if p.borrowed}
    assert borrowed == {"wan2.2_t2v_14B", "wan2.2_ti2v_5B", "flux2", "hunyuan_video_1.5", "qwen_image",
                        "qwen_image_edit", "z_image"}
