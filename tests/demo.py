"""`make run`: serve ComfyUI with the pack and show what caching does, on models that cache.

1. The trained fixtures (a small Flux at cfg 1 and a small Wan at cfg 5, tests/trained_models.py,
   whose steps change as a trained model's do) are sampled in the real server, through its HTTP
   API, uncached, with ComfyUI's built-in EasyCache and with each of our nodes at the settings
   README recommends for them. The table gives the block evaluations each computed, the speedup
   that makes, the wall speedup (median of a few runs: noisy on a shared CPU, and bounded by the
   sampler's own work on models this small) and the PSNR of the final latent against uncached.
2. One picture (docs/demo.png): each fixture's final latent uncached and with each method, drawn
   as an image, with the Cache report of one run beside them.
3. A second table runs every family on tiny random-weight models: it shows that everything
   runs, not how much a trained model of that family caches.
4. The server keeps running with the editor, which lists a workflow for the trained Flux fixture
   under Workflows (its path is printed, and it is queued once): change a threshold, queue it,
   watch the Cache report. Ctrl-C stops it; `--no-serve` exits after the tables.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import demo_workflow
import torch
import workflows_api as wf
from comfy_server import ROOT, ComfyServer, PromptRun
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(ROOT / "bench"))
from metrics import psnr_of, relative_mse  # bench/ is a folder of scripts, not a package

logger = logging.getLogger("demo")

PICTURE = ROOT / "docs" / "demo.png"
TEACACHE_LINE = re.compile(r"TeaCache \[[^\]]+\]: computed \d+/(?P<steps>\d+) steps; (?P<reused>\d+) of (?P<calls>\d+)")
CACHEDIT_LINE = re.compile(r"Cache-DiT \[[^\]]+\]: computed \d+/\d+ steps; (?P<cached>\d+) of (?P<calls>\d+) "
                           r"transformer calls cached; blocks computed (?P<blocks>\d+)/(?P<total_blocks>\d+)")
EASYCACHE_LINE = re.compile(r"EasyCache - skipped (?P<skipped>\d+)/(?P<steps>\d+) steps")
SAMPLES = ((1, 0), (4, 1), (6, 2))  # (class, seed) of each sample: three prompts
QUICK_SAMPLES = SAMPLES[:1]


@dataclass(frozen=True)
class Setting:
    """One method at the settings README recommends for a fixture."""

    label: str
    settings: str
    method: wf.Method


@dataclass(frozen=True)
class Fixture:
    name: str
    steps: int
    cfg: float
    settings: tuple[Setting, ...]


EASYCACHE = Setting("EasyCache (ComfyUI)", "reuse_threshold 0.2 (its default)", wf.EasyCache(reuse_threshold=0.2))
# README's "Settings the data supports".
FIXTURES = (
    Fixture("flux", demo_workflow.FLUX_STEPS, 1.0, (
        EASYCACHE,
        Setting("Apply TeaCache", "flux preset, rel_l1_thresh 0.4", wf.TeaCache(rel_l1_thresh=0.4)),
        Setting("Apply Cache-DiT", "F1B0, TaylorSeer order 2, threshold 0.24",
                wf.CacheDiT(demo_workflow.FLUX_CACHEDIT)),
    )),
    Fixture("wan", 30, 5.0, (
        EASYCACHE,
        Setting("Apply TeaCache", "auto preset, rel_l1_thresh 0.12", wf.TeaCache(rel_l1_thresh=0.12)),
        Setting("Apply Cache-DiT", "F1B0, TaylorSeer order 1, threshold 0.32",
                wf.CacheDiT({"residual_diff_threshold": 0.32, "calibrator": "taylorseer"})),
    )),
)
UNCACHED = Setting("uncached", "", None)


@dataclass(frozen=True)
class Row:
    fixture: str
    setting: Setting
    blocks: int  # block evaluations over all samples
    total_blocks: int
    wall_speedup: float  # median uncached wall time / median wall time
    psnr_db: float  # of the mean relative MSE over the samples
    runs: tuple[PromptRun, ...]

    @property
    def block_speedup(self) -> float:
        return self.total_blocks / self.blocks


def run_ok(server: ComfyServer, graph: dict) -> PromptRun:
    run = server.run(graph)
    if run.status != "success":
        raise RuntimeError(f"prompt failed: {run.error}\n{server.log_tail()}")
    return run


def _match(pattern: re.Pattern, log: str) -> re.Match:
    match = pattern.search(log)
    if match is None:
        raise RuntimeError(f"no {pattern.pattern[:20]!r} line in the run's log:\n{log}")
    return match


@dataclass(frozen=True)
class CallShape:
    """How ComfyUI ran the fixture: model calls per sampler step, transformer blocks per call."""

    per_step: int
    blocks: int


def call_shape(fixture: Fixture, runs: dict[str, tuple[PromptRun, ...]]) -> CallShape:
    """From our nodes' own summary lines (CFG's two branches often share one call)."""
    teacache = next(s for s in fixture.settings if isinstance(s.method, wf.TeaCache))
    cachedit = next(s for s in fixture.settings if isinstance(s.method, wf.CacheDiT))
    tea = _match(TEACACHE_LINE, runs[teacache.label][0].log)
    dbc = _match(CACHEDIT_LINE, runs[cachedit.label][0].log)
    return CallShape(int(tea["calls"]) // int(tea["steps"]), int(dbc["total_blocks"]) // int(dbc["calls"]))


def block_evaluations(fixture: Fixture, setting: Setting, run: PromptRun, shape: CallShape) -> int:
    """Transformer blocks the run evaluated (per model call), from the summary line each method logs."""
    if setting.method is None:
        return fixture.steps * shape.per_step * shape.blocks
    if isinstance(setting.method, wf.EasyCache):
        match = _match(EASYCACHE_LINE, run.log)
        return (int(match["steps"]) - int(match["skipped"])) * shape.per_step * shape.blocks
    if isinstance(setting.method, wf.TeaCache):
        match = _match(TEACACHE_LINE, run.log)
        return (int(match["calls"]) - int(match["reused"])) * shape.blocks
    return int(_match(CACHEDIT_LINE, run.log)["blocks"])  # counted by Cache-DiT, its Fn and Bn blocks included


def compare_fixture(server: ComfyServer, fixture: Fixture, samples: tuple[tuple[int, int], ...],
                    progress: Callable[[str], None]) -> list[Row]:
    """Every setting on every sample of one fixture; the uncached runs are the reference."""
    def graph(setting: Setting, class_index: int, seed: int) -> dict:
        return wf.fixture_graph(fixture.name, setting.method, class_index=class_index, seed=seed,
                                steps=fixture.steps, cfg=fixture.cfg)

    run_ok(server, graph(UNCACHED, 0, 0))  # loads the model: keep it out of the timings
    settings = (UNCACHED, *fixture.settings)
    runs = {}
    for setting in settings:
        runs[setting.label] = tuple(run_ok(server, graph(setting, c, s)) for c, s in samples)
        progress(f"{fixture.name:5} {setting.label}: {len(samples)} runs")
    shape = call_shape(fixture, runs)
    references = [wf.saved_latent(run.history, server.output_dir) for run in runs[UNCACHED.label]]
    uncached_wall = statistics.median(run.wall_s for run in runs[UNCACHED.label])
    rows = []
    for setting in settings:
        latents = [wf.saved_latent(run.history, server.output_dir) for run in runs[setting.label]]
        error = statistics.fmean(relative_mse(latent, ref) for latent, ref in zip(latents, references))
        rows.append(Row(
            fixture.name, setting, sum(block_evaluations(fixture, setting, run, shape) for run in runs[setting.label]),
            len(samples) * fixture.steps * shape.per_step * shape.blocks,
            uncached_wall / statistics.median(run.wall_s for run in runs[setting.label]), psnr_of(error), runs[setting.label],
        ))
    return rows


def _db(value: float) -> str:
    return "identical" if value == float("inf") else f"{value:.1f} dB"


def table(header: tuple[str, ...], cells: list[tuple[str, ...]]) -> str:
    cells = [header, *cells]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def fixture_table(rows: list[Row]) -> str:
    header = ("fixture", "method", "settings", "blocks computed", "block speedup", "wall speedup*", "PSNR vs uncached")
    return table(header, [
        (r.fixture, r.setting.label, r.setting.settings or "-", f"{r.blocks}/{r.total_blocks}",
         f"{r.block_speedup:.2f}x", f"{r.wall_speedup:.2f}x", _db(r.psnr_db))
        for r in rows
    ])


# --- the picture -------------------------------------------------------------------------------------------------

def _caption(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: list[str]) -> None:
    font = ImageFont.load_default()
    for i, line in enumerate(lines):
        draw.text((xy[0], xy[1] + 13 * i), line, fill=(20, 20, 20), font=font)


def draw_picture(rows: list[Row], server: ComfyServer, path: Path) -> None:
    """Per fixture: the first sample's final latent, uncached and per method, captioned; the Cache report beside."""
    import trained_models  # imported here: it imports comfy, which importing workflows_api puts on sys.path

    pad, caption_h = 12, 44
    tiles: list[list[tuple[Image.Image, list[str]]]] = []
    for fixture in dict.fromkeys(r.fixture for r in rows):
        fixture_rows = [r for r in rows if r.fixture == fixture]
        reference = wf.saved_latent(fixture_rows[0].runs[0].history, server.output_dir)
        line = []
        for row in fixture_rows:
            latent = wf.saved_latent(row.runs[0].history, server.output_dir)
            image = trained_models.picture(latent, reference)[0]
            tile = Image.fromarray((image.numpy() * 255).round().astype("uint8"))
            words = [f"{fixture}: {row.setting.label}"]
            if row.setting.method is not None:
                words.append(f"{row.block_speedup:.2f}x fewer blocks, {_db(row.psnr_db)}")
            line.append((tile, words))
        tiles.append(line)
    report_row = next(r for r in rows if r.fixture == "flux" and isinstance(r.setting.method, wf.CacheDiT))
    report = Image.open(wf.saved_report(report_row.runs[0].history, server.output_dir)).convert("RGB")
    grid_w = max(sum(t.width + pad for t, _ in line) for line in tiles) + pad
    grid_h = sum(max(t.height for t, _ in line) + caption_h + pad for line in tiles) + pad
    canvas = Image.new("RGB", (grid_w + report.width + pad, max(grid_h, report.height + 24 + 2 * pad)), "white")
    draw = ImageDraw.Draw(canvas)
    top = pad
    for line in tiles:
        left = pad
        for tile, words in line:
            canvas.paste(tile, (left, top))
            _caption(draw, (left, top + tile.height + 4), words)
            left += tile.width + pad
        top += max(t.height for t, _ in line) + caption_h + pad
    _caption(draw, (grid_w, pad), ["Cache report of the flux Apply Cache-DiT run (first sample):"])
    canvas.paste(report, (grid_w, pad + 24))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


# --- everything runs: tiny random-weight models -------------------------------------------------------------------

def tiny_rows(server: ComfyServer, steps: int, progress: Callable[[str], None]) -> list[tuple[str, ...]]:
    """Each family on its tiny random-weight model: uncached, and each node at its defaults."""
    cells = []
    for variant in wf.FAMILY_VARIANTS:
        run_ok(server, wf.graph(variant, steps=2, seed=1))  # loads the model
        runs = {label: run_ok(server, wf.graph(variant, method, steps=steps)) for label, method in
                (("uncached", None), ("TeaCache defaults", wf.TeaCache()), ("Cache-DiT defaults", wf.CacheDiT({})))}
        reference = wf.saved_latent(runs["uncached"].history, server.output_dir)
        for label, run in runs.items():
            if label == "uncached":
                continue
            pattern = TEACACHE_LINE if label.startswith("TeaCache") else CACHEDIT_LINE
            match = _match(pattern, run.log)
            reused = int(match["reused"] if "reused" in pattern.groupindex else match["cached"])
            error = relative_mse(wf.saved_latent(run.history, server.output_dir), reference)
            cells.append((variant, label, f"{reused}/{match['calls']}", _db(psnr_of(error))))
        progress(f"{variant}: runs")
    return cells


# --- the server ---------------------------------------------------------------------------------------------------

def machine_line() -> str:
    return (
        f"{platform.platform()} | {os.cpu_count()} CPUs | torch {torch.__version__} | "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    )


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
    parser.add_argument("--quick", action="store_true", help="one sample per fixture instead of three")
    parser.add_argument("--picture", type=Path, default=PICTURE, help=f"where to draw the picture (default {PICTURE})")
    parser.add_argument("--no-serve", action="store_true", help="exit after the tables instead of serving")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s", force=True)  # quiet ComfyUI
    for name in ("demo", "comfy_server"):
        logging.getLogger(name).setLevel(logging.INFO)

    def progress(line: str) -> None:
        print(f"  {line}", flush=True)

    start = time.monotonic()
    with ComfyServer(args.port, frontend=True) as server:
        samples = QUICK_SAMPLES if args.quick else SAMPLES
        print(f"Trained fixtures ({len(samples)} prompts each), in the server at {server.url}:", flush=True)
        rows = [row for fixture in FIXTURES for row in compare_fixture(server, fixture, samples, progress)]
        draw_picture(rows, server, args.picture)
        print("Tiny random-weight models (everything runs):", flush=True)
        tiny = tiny_rows(server, 20, progress)
        path, prompt = demo_workflow.install(server, demo_workflow.nodes())
        run_ok(server, prompt)

        print(f"\n{machine_line()} | ComfyUI at {server.url} | demo took {time.monotonic() - start:.0f} s\n")
        print("Trained fixtures: flux 28 Euler steps at cfg 1, wan 30 at cfg 5; final latent vs uncached, pooled over "
              f"{len(samples)} prompts.\n")
        print(fixture_table(rows))
        print("\n* wall speedup: median of the runs, on a shared CPU; these models are so small that the sampler's own "
              "work bounds it well below the block speedup.\n")
        print("Tiny random-weight models, 20 steps: they show that every family runs with both nodes; random weights "
              "change too much per step for real thresholds to skip.\n")
        print(table(("family", "method", "calls reused", "PSNR vs uncached"), tiny))
        print(f"\nPicture: {args.picture}")
        print(f"Workflow for the editor (Workflows sidebar; queued once): {path}", flush=True)
        if not args.no_serve:
            serve_until_interrupted(server)


if __name__ == "__main__":
    main()
