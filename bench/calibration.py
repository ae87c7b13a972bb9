"""Calibrate TeaCache on the trained fixtures, and check what the calibration buys.

    .venv/bin/python bench/calibration.py            # writes docs/calibration.md and docs/calibration-*.png

For each trained fixture (tests/trained_models.py) it
1. runs Calibrate TeaCache on uncached runs of every class (seeds 0..), reading the fit's R²;
2. records held-out runs (other seeds) the same way and scores the fitted polynomial and the
   borrowed preset's on them (R² of the predicted output change);
3. for target speedups, chooses a threshold for the fitted and for the borrowed coefficients by
   the same replay of the calibration runs, samples the held-out runs with each, and reports the
   achieved speedup (transformer calls, uncached / cached) and PSNR of the final latent against
   uncached; and does the same for Apply Cache-DiT's target with its default gates.
Everything goes through the pack's real nodes inside the real ComfyUI.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import setup_comfy  # noqa: F401  (ComfyUI, tests/ and the pack as dit_cache on sys.path; CPU)

# isort: split
import comfy.sample
import folder_paths
import numpy as np
import torch
import trained_models as fx
from dit_cache.caching.calibration import fit_rescale, samples
from dit_cache.caching.dbcache import DBCacheConfig
from dit_cache.caching.target_speedup import dbcache_threshold, teacache_threshold
from dit_cache.caching.teacache import TeaCacheConfig
from dit_cache.caching.teacache_presets import PRESETS
from dit_cache.caching.user_presets import load
from dit_cache.nodes.cachedit_node import ApplyCacheDiT
from dit_cache.nodes.calibration_node import CalibrateTeaCache, CalibrationReport
from dit_cache.nodes.presets import presets_directory
from dit_cache.nodes.teacache_node import ApplyTeaCache
from metrics import psnr
from PIL import Image
from runs import patch_of


@dataclass(frozen=True)
class Setting:
    fixture: str
    borrowed: str  # the published preset a user of this family would otherwise take
    cfg: float
    steps: int = 20


SETTINGS = (Setting("flux", "flux", cfg=1.0), Setting("wan", "wan2.1_t2v_1.3B", cfg=5.0))
TARGETS = (1.5, 2.0, 2.5)
CALIBRATION_SEEDS = (0, 1)
HELD_OUT_SEEDS = (100,)


def sample(model: Any, setting: Setting, class_index: int, seed: int) -> torch.Tensor:
    latent = fx.empty_latent(setting.fixture)["samples"]
    noise = comfy.sample.prepare_noise(latent, seed)
    positive = fx.conditioning(setting.fixture, class_index)
    negative = fx.conditioning(setting.fixture, None)
    return comfy.sample.sample(model, noise, setting.steps, setting.cfg, "euler", "simple", positive, negative,
                               latent, seed=seed, disable_pbar=True)


def prompts(seeds: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(k, s) for s in seeds for k in range(fx.CLASSES)]


def calibrate(model: Any, setting: Setting, name: str, seeds: tuple[int, ...]) -> tuple[Any, list[torch.Tensor]]:
    """Calibrate TeaCache over these prompts; returns the node's MODEL and the (uncached) results."""
    (patched,) = CalibrateTeaCache.execute(model, preset_name=name, model_type="auto", append=True)  # a fresh user directory: starts empty
    return patched, [sample(patched, setting, class_index, seed) for class_index, seed in prompts(seeds)]


def r2(coefficients: tuple[float, ...], x: np.ndarray, y: np.ndarray) -> float:
    predicted = np.polyval(coefficients, x)
    return 1.0 - float(((y - predicted) ** 2).sum() / ((y - y.mean()) ** 2).sum())


def run_teacache(model: Any, setting: Setting, preset: str, thresh: float, coefficients: str, target: float,
                 references: list[torch.Tensor]) -> dict[str, float]:
    (patched,) = ApplyTeaCache.execute(model, model_type=preset, rel_l1_thresh=thresh, coefficients=coefficients, target_speedup=target)
    return measure(patched, "teacache", setting, references)


def measure(patched: Any, method: str, setting: Setting, references: list[torch.Tensor]) -> dict[str, float]:
    patch = patch_of(patched, method)
    calls = computed = 0
    scores = []
    for (class_index, seed), reference in zip(prompts(HELD_OUT_SEEDS), references, strict=True):
        result = sample(patched, setting, class_index, seed)
        calls += patch.last_run.calls
        computed += patch.last_run.calls_computed
        scores.append(psnr(result, reference))
    threshold = patch.config.rel_l1_thresh if method == "teacache" else patch.config.residual_diff_threshold
    return {"threshold": threshold, "speedup": calls / computed, "psnr": float(np.mean(scores)),
            "psnr_min": float(np.min(scores))}


def fixture_section(setting: Setting, docs: Path) -> list[str]:
    model = fx.load_model(setting.fixture)
    name = f"trained_{setting.fixture}"
    patched, _ = calibrate(model, setting, name, CALIBRATION_SEEDS)
    user = load(presets_directory() / f"{name}.json")
    plot, _ = CalibrationReport.execute(patched, None)
    Image.fromarray((plot[0].numpy() * 255).round().astype(np.uint8)).save(docs / f"calibration-{setting.fixture}.png")

    _, references = calibrate(model, setting, f"{name}_held_out", HELD_OUT_SEEDS)
    held_out = load(presets_directory() / f"{name}_held_out.json")
    x, y = samples(held_out.runs)
    borrowed = PRESETS[setting.borrowed]
    lines = [
        (f"### {setting.fixture} fixture: {type(model.model.diffusion_model).__name__}, {setting.steps} Euler steps "
        f"(simple), cfg {setting.cfg:g}"),
        "",
        (f"Calibrated on {len(user.runs)} runs ({fx.CLASSES} classes x seeds {list(CALIBRATION_SEEDS)}); "
        f"held out: {len(held_out.runs)} runs (seeds {list(HELD_OUT_SEEDS)}). Indicator: `{user.preset.indicator}`."),
        "",
        f"- fitted coefficients: `{', '.join(f'{c:.6g}' for c in user.preset.coefficients)}`",
        f"- R² of the fit on its {user.fit.samples} calibration samples: **{user.fit.r2:.3f}**",
        (f"- R² on the {len(x)} held-out samples: fitted **{r2(user.preset.coefficients, x, y):.3f}**, "
        f"borrowed `{setting.borrowed}` {r2(borrowed.coefficients, x, y):.3f}; a refit on the held-out runs "
        f"themselves reaches {fit_rescale(x, y).r2:.3f}"),
        f"- plot: `docs/calibration-{setting.fixture}.png` (the TeaCache calibration report node's image)",
        "",
        ("TeaCache at a target speedup. Both rows get their threshold from the same replay of the calibration runs "
        "(the fitted preset through Apply TeaCache's `target_speedup`; the borrowed coefficients through the same "
        "search, as the node has no calibration data for a built-in preset). Speedup = transformer calls "
        "uncached / cached over the held-out runs; PSNR of the final latent against uncached (mean, min)."),
        "",
        "| target | coefficients | threshold | predicted | achieved | PSNR mean | PSNR min |",
        "|---|---|---|---|---|---|---|",
    ]
    base = TeaCacheConfig(0.0, borrowed.coefficients, warmup_steps=borrowed.warmup_steps,
                          force_last_step=borrowed.force_last_step)
    for target in TARGETS:
        fitted = run_teacache(model, setting, f"user:{name}", 0.0, "", target, references)
        predicted_fitted = teacache_threshold(user.runs, replace(base, coefficients=user.preset.coefficients), target)
        choice = teacache_threshold(user.runs, base, target)
        other = run_teacache(model, setting, setting.borrowed, choice.threshold, "", 0.0, references)
        for label, row, predicted in (("fitted", fitted, predicted_fitted.predicted),
                                      (f"borrowed `{setting.borrowed}`", other, choice.predicted)):
            lines.append(f"| {target:g}x | {label} | {row['threshold']:.4g} | {predicted:.2f}x | {row['speedup']:.2f}x "
                         f"| {row['psnr']:.1f} dB | {row['psnr_min']:.1f} dB |")
    lines += [
        "",
        ("Apply Cache-DiT at a target speedup (its defaults F1B0 W4 MC3; threshold chosen from the same "
        "calibration runs' first-block residual diffs):"),
        "",
        "| target | residual_diff_threshold | predicted | achieved | PSNR mean | PSNR min |",
        "|---|---|---|---|---|---|",
    ]
    for target in (1.5, 2.0):
        (cached,) = ApplyCacheDiT.execute(model, target_speedup=target, calibration=f"user:{name}")
        row = measure(cached, "cachedit", setting, references)
        predicted = dbcache_threshold(user.runs, DBCacheConfig(), target).predicted  # the node's own defaults
        lines.append(f"| {target:g}x | {row['threshold']:.4g} | {predicted:.2f}x | {row['speedup']:.2f}x "
                     f"| {row['psnr']:.1f} dB | {row['psnr_min']:.1f} dB |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    present = [s for s in SETTINGS if fx.weights_path(s.fixture).exists()]
    missing = [s.fixture for s in SETTINGS if s not in present]
    with tempfile.TemporaryDirectory() as user_dir:
        folder_paths.set_user_directory(user_dir)
        sections = [line for setting in present for line in fixture_section(setting, args.out)]
    if missing:
        sections.append(f"Not measured: the {', '.join(missing)} fixture (no trained weights in bench/fixtures/ yet).")
    header = [
        "# Calibrating TeaCache: measured on the trained fixtures",
        "",
        (f"Written by `bench/calibration.py` on {datetime.date.today()} ({platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}, ComfyUI 0.3.75). Models: the small "
        "trained fixtures of `tests/trained_models.py` (ComfyUI's own classes, trained by rectified flow on "
        "procedural shapes), not full-size models: the numbers show what calibration does against a borrowed "
        "preset on a model whose coefficients nobody published, not what FLUX.1 or Wan 2.2 reach."),
        "",
    ]
    (args.out / "calibration.md").write_text("\n".join(header + sections))
    print("\n".join(header + sections))


if __name__ == "__main__":
    main()
