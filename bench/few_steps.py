"""What each method does at few steps (4-9), as distilled models are sampled, on the trained fixtures.

    .venv/bin/python bench/few_steps.py     # a few minutes on 2 CPU cores; writes docs/few_steps.md

Same in-process ComfyUI and KSampler as bench/run.py. Every method runs at README's recommended
settings for the fixture ("Settings the data supports") and at the node's defaults, against the
uncached model at the same step count: block fraction (blocks executed / uncached) and pooled PSNR
of the final latent. The fixtures are not distilled models: these numbers show what each method's
step rules leave to cache at a given step count, not how a distilled model's steps change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import setup_comfy  # noqa: F401  (ComfyUI on sys.path, CPU)

# isort: split
import methods as m
import report
import trained_models as fx
from metrics import count_blocks, psnr_of, relative_mse
from run import FIDELITY, blocks_of, sample

ROOT = Path(__file__).resolve().parent.parent
STEPS = (4, 6, 8, 9)
SAMPLES = ((0, 0), (2, 0), (5, 0), (7, 0))  # (class, seed)
SETTINGS = {
    "flux": (
        m.teacache(0.4),
        m.teacache(0.2),
        m.dbcache(1, 0.24, calibrator="taylorseer", taylorseer_order=2),
        m.cachedit("Apply Cache-DiT", "node defaults"),
        m.easycache(0.2),
    ),
    "wan": (
        m.teacache(0.12),
        m.teacache(0.2),
        m.dbcache(1, 0.32, calibrator="taylorseer", taylorseer_order=1),
        m.cachedit("Apply Cache-DiT", "node defaults"),
        m.easycache(0.2),
    ),
}


def against_uncached(model: object, fixture: str, latent: dict, methods: tuple, samples: tuple, steps: int,
                     cfg: float) -> list[tuple[str, float, float]]:
    """(method, block fraction, pooled PSNR) of each method on `model`, against `model` uncached."""
    blocks = blocks_of(model)
    references, reference_blocks = [], 0
    for class_index, seed in samples:
        with count_blocks(blocks) as counter:
            references.append(sample(model, fixture, latent, class_index, seed, steps, cfg))
        reference_blocks += counter[0]
    rows = []
    for method in methods:
        patched, errors, executed = method.apply(model), [], 0
        for reference, (class_index, seed) in zip(references, samples, strict=True):
            with count_blocks(blocks) as counter:
                out = sample(patched, fixture, latent, class_index, seed, steps, cfg)
            executed += counter[0]
            errors.append(relative_mse(out, reference))
        rows.append((method.label, executed / reference_blocks, min(psnr_of(statistics.fmean(errors)), report.PSNR_CAP)))
    return rows


def measure(fixture: str, steps: int, cfg: float) -> list[tuple[str, float, float]]:
    """(method, block fraction, pooled PSNR) for every setting of `fixture` at `steps`."""
    model = fx.load_model(fixture)
    return against_uncached(model, fixture, fx.empty_latent(fixture), SETTINGS[fixture], SAMPLES, steps, cfg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "few_steps.md")
    args = parser.parse_args()
    host = report.machine()
    lines = [
        "# Few steps: what each method leaves to cache at 4-9 steps",
        "",
        (
            f"Machine: {host['processor']}, {host['cpus']} CPUs, torch {host['torch']}; {host['date']}; "
            f"ComfyUI {host['comfyui']}; `bench/few_steps.py`. Trained fixtures (not distilled), "
            f"Euler / simple, {len(SAMPLES)} samples each; PSNR of the final latent against the uncached model "
            "at the same step count (100 = identical)."
        ),
        "",
        "| fixture | steps | method | blocks executed | PSNR dB |",
        "|---|---|---|---|---|",
    ]
    for setup in (s for s in FIDELITY if s.fixture in SETTINGS):  # the fixtures the few-step settings are for
        for steps in STEPS:
            for label, fraction, psnr in measure(setup.fixture, steps, setup.cfg):
                lines.append(f"| {setup.fixture} (cfg {setup.cfg:g}) | {steps} | {label} | {fraction:.2f} | {psnr:.1f} |")
                print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
