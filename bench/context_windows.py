"""What each method caches under context windows, on the trained Wan fixture.

    .venv/bin/python bench/context_windows.py   # a few minutes on 2 CPU cores; writes docs/context_windows.md

A 9-latent-frame video through ComfyUI's WanContextWindowsManual (windows of 3 latent frames,
overlapping by 1), sampled by the same in-process KSampler as bench/run.py, against the uncached
model with the same windows; beside it, the same settings on the 3-frame video the fixture was
trained on, without windows. Each window caches against itself (the pack keeps one state per
window and CFG branch), so the two columns should tell the same story.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import setup_comfy  # noqa: F401  (ComfyUI on sys.path, CPU)

# isort: split
import methods as m
import report
import torch
import trained_models as fx
from comfy_extras.nodes_context_windows import WanContextWindowsManualNode
from few_steps import against_uncached
from run import FIDELITY

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ((0, 0), (3, 1), (6, 2))  # (class, seed)
FRAMES = 9  # latent frames of the windowed video
WINDOW = {"context_length": 9, "context_overlap": 4, "context_schedule": "standard_static"}  # 3 latent frames, overlap 1
SETTINGS = (
    m.teacache(0.12),
    m.dbcache(1, 0.32, calibrator="taylorseer", taylorseer_order=1),
    m.cachedit("Apply Cache-DiT", "node defaults"),
)


def with_windows(model: object) -> object:
    inputs = WanContextWindowsManualNode.INPUT_TYPES()
    defaults = {name: entry[1]["default"] for section in inputs.values() for name, entry in section.items()
                if len(entry) > 1 and "default" in entry[1]}
    return WanContextWindowsManualNode.execute(**{**defaults, "model": model, **WINDOW})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "context_windows.md")
    args = parser.parse_args()
    setup = next(s for s in FIDELITY if s.fixture == "wan")
    model = fx.load_model("wan")
    short = fx.empty_latent("wan")
    shape = list(short["samples"].shape)
    shape[2] = FRAMES
    long = {"samples": torch.zeros(shape)}
    plain = against_uncached(model, "wan", short, SETTINGS, SAMPLES, setup.steps, setup.cfg)
    windowed = against_uncached(with_windows(model), "wan", long, SETTINGS, SAMPLES, setup.steps, setup.cfg)
    host = report.machine()
    lines = [
        (
            f"Machine: {host['processor']}, {host['cpus']} CPUs, torch {host['torch']}; {host['date']}; "
            f"ComfyUI {host['comfyui']}; `bench/context_windows.py`. Trained Wan fixture, {setup.steps} Euler steps, "
            f"cfg {setup.cfg:g}, {len(SAMPLES)} samples. Windowed: {FRAMES} latent frames through "
            f"WanContextWindowsManual (context_length {WINDOW['context_length']}, context_overlap "
            f"{WINDOW['context_overlap']} real frames, {WINDOW['context_schedule']}: windows of 3 latent frames "
            "overlapping by 1, other inputs at "
            "their defaults), against the uncached model with the same windows. Plain: the trained 3 frames, no "
            "windows, against uncached. Blocks executed relative to uncached; PSNR of the final latent (100 = identical)."
        ),
        "",
        "| method | plain: blocks executed | plain: PSNR dB | windowed: blocks executed | windowed: PSNR dB |",
        "|---|---|---|---|---|",
    ]
    for (label, plain_fraction, plain_psnr), (_, fraction, psnr) in zip(plain, windowed, strict=True):
        lines.append(f"| {label} | {plain_fraction:.2f} | {plain_psnr:.1f} | {fraction:.2f} | {psnr:.1f} |")
        print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
