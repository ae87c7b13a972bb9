"""`make run`: serve ComfyUI with the pack, and compare caching methods on tiny models of every family.

For each family the real server runs the same text-to-latent workflow uncached, with
ComfyUI's built-in EasyCache, with Apply TeaCache and with Apply Cache-DiT, then prints what each computed,
how long it took and how far its final latent moved from the uncached one. The server
keeps running afterwards (browser UI included) until Ctrl-C; `--no-serve` exits instead.

The models have random weights, so their outputs change far more from step to step than a
trained model's: at the thresholds recommended for real models TeaCache and EasyCache skip
little or nothing here. The "demo threshold" rows use the identity rescale (coefficients
"1, 0") with a threshold chosen to skip about half the steps, to show the cost and the error
of skipping on these models. Timings are wall times on this machine's CPU, not GPU figures.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import logging
import math
import os
import platform
import re
import signal
import sys
import time
from dataclasses import dataclass

import torch
import workflows_api as wf
from comfy_server import ROOT, ComfyServer, PromptRun

logger = logging.getLogger("demo")

IDENTITY = "1, 0"
# Identity-rescale thresholds that skip about half of 20 steps on each tiny model (latent side 32).
DEMO_THRESHOLDS = {
    "flux": 0.4, "wan21_t2v": 1.5, "wan22_5b": 1.5, "hunyuan_video": 0.45, "qwen_image": 0.45, "z_image": 0.6,
}
# What model_type "auto" resolves to for each tiny model, to show the preset's recommended threshold.
AUTO_PRESETS = {
    "flux": "flux", "wan21_t2v": "wan2.1_t2v_1.3B", "wan22_5b": "wan2.2_ti2v_5B",
    "hunyuan_video": "hunyuan_video", "qwen_image": "qwen_image", "z_image": "z_image",
}
TEACACHE_LINE = re.compile(r"TeaCache \[[^\]]+\]: computed \d+/(?P<steps>\d+) steps; (?P<reused>\d+) of (?P<calls>\d+)")
CACHEDIT_LINE = re.compile(r"Cache-DiT \[[^\]]+\]: computed \d+/\d+ steps; (?P<cached>\d+) of (?P<calls>\d+)")
EASYCACHE_LINE = re.compile(r"EasyCache - skipped (?P<skipped>\d+)/(?P<steps>\d+) steps")


@dataclass(frozen=True)
class Row:
    family: str
    method: str
    computed: int
    total: int
    wall_s: float
    speedup: float
    psnr_db: float


def recommended_thresholds() -> dict[str, float]:
    """Each preset's recommended threshold, from the pack itself (imported as package dit_cache, as in tests)."""
    init = ROOT / "__init__.py"
    spec = importlib.util.spec_from_file_location("dit_cache", init, submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["dit_cache"] = pack
    spec.loader.exec_module(pack)
    return {name: preset.recommended_thresh for name, preset in pack.caching.teacache_presets.PRESETS.items()}


def run_ok(server: ComfyServer, graph: dict) -> PromptRun:
    run = server.run(graph)
    if run.status != "success":
        raise RuntimeError(f"prompt failed: {run.error}\n{server.log_tail()}")
    return run


def psnr(latent: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB with the reference's value range as peak; inf when identical."""
    mse = torch.mean((latent.double() - reference.double()) ** 2).item()
    if mse == 0.0:
        return math.inf
    peak = (reference.max() - reference.min()).item()
    return 10.0 * math.log10(peak**2 / mse)


def teacache_calls(log: str) -> tuple[int, int, int]:
    """(computed calls, total calls, steps) from the TeaCache line of one run."""
    match = TEACACHE_LINE.search(log)
    if match is None:
        raise RuntimeError(f"no TeaCache line in the run's log:\n{log}")
    calls = int(match["calls"])
    return calls - int(match["reused"]), calls, int(match["steps"])


def cachedit_calls(log: str) -> tuple[int, int]:
    """(fully computed calls, total calls) from the Cache-DiT line of one run."""
    match = CACHEDIT_LINE.search(log)
    if match is None:
        raise RuntimeError(f"no Cache-DiT line in the run's log:\n{log}")
    return int(match["calls"]) - int(match["cached"]), int(match["calls"])


def easycache_steps(log: str) -> tuple[int, int]:
    """(computed steps, total steps) from EasyCache's own summary line."""
    match = EASYCACHE_LINE.search(log)
    if match is None:
        raise RuntimeError(f"no EasyCache line in the run's log:\n{log}")
    return int(match["steps"]) - int(match["skipped"]), int(match["steps"])


def compare_family(server: ComfyServer, variant: str, steps: int, size: int, recommended: float) -> list[Row]:
    """Uncached, EasyCache and TeaCache runs of one family, as table rows."""
    run_ok(server, wf.graph(variant, steps=2, seed=1, size=size))  # loads the model: keep it out of the timings
    demo = DEMO_THRESHOLDS[variant]
    auto = f"TeaCache (auto: {AUTO_PRESETS[variant]}, {recommended:g})"
    methods: dict[str, wf.Method] = {
        "uncached": None,
        "EasyCache (reuse_threshold 0.2)": wf.EasyCache(reuse_threshold=0.2),
        auto: wf.TeaCache(rel_l1_thresh=recommended),
        f"TeaCache (demo threshold {demo:g}, coefficients {IDENTITY})": wf.TeaCache(
            rel_l1_thresh=demo, coefficients=IDENTITY
        ),
        "Cache-DiT DBCache (defaults F1B0 R0.24 W4 MC3)": wf.CacheDiT({}),
        "Cache-DiT DBCache + TaylorSeer order 1": wf.CacheDiT({"enable_taylorseer": True}),
        "Cache-DiT DBCache demo threshold 1.0 (W4 MC3)": wf.CacheDiT({"residual_diff_threshold": 1.0}),
        "Cache-DiT SCM medium, static": wf.CacheDiT({"scm_preset": "medium", "scm_policy": "static"}),
    }
    runs = {label: run_ok(server, wf.graph(variant, m, steps=steps, size=size)) for label, m in methods.items()}
    reference = wf.saved_latent(runs["uncached"].history, server.output_dir)
    # EasyCache logs steps, TeaCache logs transformer calls: TeaCache's line gives calls per step.
    _, calls, tea_steps = teacache_calls(runs[auto].log)
    calls_per_step = calls // tea_steps
    rows = []
    for (label, method), run in zip(methods.items(), runs.values()):
        if method is None:
            computed = total = steps * calls_per_step
        elif isinstance(method, wf.EasyCache):
            computed, total = (n * calls_per_step for n in easycache_steps(run.log))
        elif isinstance(method, wf.CacheDiT):  # a cached call still runs its Fn and Bn blocks
            computed, total = cachedit_calls(run.log)
        else:
            computed, total, _ = teacache_calls(run.log)
        latent = wf.saved_latent(run.history, server.output_dir)
        speedup = runs["uncached"].wall_s / run.wall_s
        rows.append(Row(variant, label, computed, total, run.wall_s, speedup, psnr(latent, reference)))
    return rows


def machine_line() -> str:
    return (
        f"{platform.platform()} | {os.cpu_count()} CPUs | torch {torch.__version__} | "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )


def table(rows: list[Row]) -> str:
    header = ("family", "method", "calls computed/total", "wall s", "speedup", "PSNR dB vs uncached")
    cells = [header] + [
        (r.family, r.method, f"{r.computed}/{r.total}", f"{r.wall_s:.2f}", f"{r.speedup:.2f}x", f"{r.psnr_db:.1f}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_until_interrupted(server: ComfyServer) -> None:
    """Block until Ctrl-C or SIGTERM; the caller's `with` then stops the server."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupt)
    print(f"\nComfyUI with the pack is running: open {server.url} in a browser. Ctrl-C stops it.", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        logger.info("stopping ComfyUI")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8188, help="loopback port to serve on (default 8188)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps per run (default 20)")
    parser.add_argument("--size", type=int, default=32, help="latent height = width (default 32)")
    parser.add_argument("--no-serve", action="store_true", help="exit after the table instead of serving")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s", force=True)  # quiet ComfyUI
    for name in ("demo", "comfy_server"):
        logging.getLogger(name).setLevel(logging.INFO)

    recommended = recommended_thresholds()
    with ComfyServer(args.port, frontend=True) as server:
        rows = []
        for variant in wf.FAMILY_VARIANTS:
            logger.info("running %s", variant)
            rows += compare_family(server, variant, args.steps, args.size, recommended[AUTO_PRESETS[variant]])
        print(f"\n{machine_line()}\n{args.steps} steps, latent side {args.size}, ComfyUI server at {server.url}\n")
        print(table(rows), flush=True)
        if not args.no_serve:
            serve_until_interrupted(server)


if __name__ == "__main__":
    main()
