"""The trained fixtures behave like trained models: they draw their classes, and their residuals cache."""

from __future__ import annotations

from typing import Any

import comfy.sample
import pytest
import torch
import trained_models as fx
from dit_cache.nodes.cachedit_node import ApplyCacheDiT
from runs import last_run

STEPS = 20
CLASSES = (3, 6)


@pytest.fixture(scope="module", params=fx.FIXTURES)
def fixture(request: pytest.FixtureRequest) -> tuple[str, Any]:
    return request.param, fx.load_model(request.param)


def sample(name: str, model: Any, class_index: int, seed: int = 0) -> torch.Tensor:
    """A final latent in the model's internal space (the space the data was drawn in)."""
    latent = fx.empty_latent(name)["samples"]
    noise = comfy.sample.prepare_noise(latent, seed)
    out = comfy.sample.sample(
        model, noise, STEPS, 1.0, "euler", "simple", fx.conditioning(name, class_index),
        fx.conditioning(name, None), latent, seed=seed, disable_pbar=True,
    )
    return model.model.process_latent_in(out)


def class_fit(latent: torch.Tensor) -> torch.Tensor:
    """Per class: the relative error of the best fit background + mask * colour (mask in [0, 1] per pixel)."""
    pixels = latent.flatten(2).squeeze(0).T  # [pixels, 16]
    errors = []
    for colour, background in zip(fx.class_colours(), fx.background_colours()):
        centred = pixels - background
        mask = (centred @ colour / colour.dot(colour)).clamp(0, 1)
        errors.append((centred - mask[:, None] * colour).square().sum() / pixels.square().sum())
    return torch.stack(errors)


def test_samples_are_the_prompted_class(fixture) -> None:
    name, model = fixture
    for class_index in CLASSES:
        errors = class_fit(sample(name, model, class_index))
        assert int(errors.argmin()) == class_index, errors
        assert errors[class_index] < 0.05, errors  # the shape and its tint explain the sample


def test_step_residuals_are_in_the_caching_range(fixture) -> None:
    """The first block's residual changes by 0.02-0.5 per step, as trained models do (random weights: ~0.3-0.5
    every step), so cache-dit's usual thresholds cache some steps and not others."""
    name, model = fixture
    (patched,) = ApplyCacheDiT.execute(model, residual_diff_threshold=0.12, max_warmup_steps=4)
    sample(name, patched, CLASSES[0])
    run = last_run(patched, "cachedit")
    diffs = [d for record in run.records for d in record.rel_l1 if d is not None]
    assert len(diffs) >= STEPS // 2
    assert min(diffs) < 0.12 < max(diffs), diffs
    assert 0 < run.calls - run.calls_computed < STEPS // 2
