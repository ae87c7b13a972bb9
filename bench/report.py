"""docs/benchmarks.md and the speed-fidelity plots, from the results `bench/run.py` collected."""

from __future__ import annotations

import datetime
import itertools
import os
import platform
from pathlib import Path
from typing import Any

import torch

PSNR_CAP = 100.0  # dB counted for a bit-identical sample, so that means stay finite
MATCHED = (1.5, 2.0, 3.0, 4.0, 5.0)  # fewer block evaluations than uncached, by this factor
GOALS = ((3.0, 40.0), (4.0, 35.0))  # (fewer blocks, PSNR dB) every fixture should reach with a method of ours
GOAL_OVER_EASYCACHE = (3.0, 10.0)  # and this many dB above EasyCache at this factor
OURS_EXCLUDED = ("uncached", "EasyCache")


HOW = """## How it is measured

Everything runs in-process in the real ComfyUI: its KSampler (`nodes.common_ksampler`, Euler, `simple`
schedule), its ModelPatcher, ComfyUI's own EasyCache node and this pack's nodes, called as a workflow calls
them.

- **Fidelity** uses three small models trained for this purpose (`tests/trained_models.py`, weights in
  `bench/fixtures/`, trained by `bench/train_fixtures.py`): ComfyUI's `Flux` at 2 double + 4 single blocks
  (`flux`) and at 4 double + 8 single blocks (`flux_deep`), hidden 128, and `WanModel` (6 blocks, dim 128), trained with rectified flow on procedurally drawn latents
  (a soft coloured shape per class on a tinted background; moving across 3 frames for Wan; the class given as
  4 text tokens). Random weights would mislead here: they change by 0.3-0.5 per step and never cache at real
  thresholds. Each method runs on several classes and seeds; PSNR (peak = the reference's value range) and
  SSIM (7 px Gaussian window, per channel and frame) of the final latent against the uncached latent of the
  same seed. "Pooled" PSNR is that of the mean relative MSE over the samples (so a bit-identical sample counts
  as zero error, not as infinite PSNR); "worst sample" is the lowest. The fixtures have no VAE, so there is no
  decoded-image figure.
- **Blocks executed** is exact: torch hooks on the transformer blocks count every block that ran, divided by
  the uncached count. "2x fewer blocks" means half the block evaluations. A method's fidelity at exactly
  1.5x to 5x is interpolated linearly between its two neighbouring sweep settings ("not reached" when
  its sweep does not get there).
- **Calibrators at matched compute**: the "cadence" curves run DBCache F1B0 at threshold 1 (cache whenever the
  gates allow), warm-up 2, and one computed step after every 1, 2, 3, 4, 6 or 9 cached ones: the same steps
  compute whatever the calibrator, so the curves differ only in how the skipped residual is forecast (none =
  reused as is; TaylorSeer, FoCa, DMD: cache-dit's own classes, as the node runs them).
- **Speed** uses random-weight models with the real block structure (Flux-shaped 8 double + 16 single
  blocks; Wan-shaped 16 blocks) and 576 image tokens, where the blocks take most of the step. Each method
  runs in pairs with the uncached model (alternating which goes first); its speedup is the median over the
  pairs of uncached time / its time, compared with the bound the executed blocks set (1 / blocks executed).
  "Overhead" rows run a method that never skips
  (a threshold nothing is below): the machinery's cost alone. The machine was shared with other jobs, so
  single wall times moved by up to 20 %; the process's CPU time (one torch thread) is also recorded, and is
  the steadier measure of overhead. Where speedup falls short of the bound, a profile (cProfile of 10 steps
  of the Flux timing model, DBCache F1B0 never caching: 2.10 s CPU against 2.12 s uncached, no function of
  the pack among the top entries) puts the gap in the part of the step outside the blocks (embedders,
  final layer, sampler), not in the caching machinery.
- **EasyCache** is ComfyUI 0.3.75's node at its defaults (start 0.15, end 0.95) over a `reuse_threshold`
  sweep, with one adjustment: it is handed a copy of the diffusion model's input. On a skipped step it adds
  its cached difference into that input in place; in fp32 (these CPU runs) the input is the very tensor the
  sampler then turns into the denoised latent, so every skipped step is corrupted (on the Flux fixture
  `reuse_threshold` 0.025 gave 22 dB instead of 47 dB, 0.2 gave 14 dB instead of 32 dB). In bf16/fp16, as on
  a GPU, ComfyUI casts the input to a new tensor first, which the copy reproduces: EasyCache is measured as
  GPU users run it. (Worth reporting to ComfyUI.)
"""

GPU_NOT_RUN = """`bench/gpu.py` (`make bench-gpu`) is ready but has not been run on a GPU yet: no GPU was available when
these numbers were made. It measures real-size shapes with random bf16 weights (Flux-dev 19 + 38 blocks at
1024x1024, Wan 2.1 14B at 480p x 33 frames, Qwen-Image at 1024x1024): wall speedup against the block bound
for SCM static masks and forced DBCache / TeaCache schedules, per-step overhead of each method when it never
skips, peak memory of the main device, and host synchronisations per step (`torch.cuda.set_sync_debug_mode`).
Its `--smoke` mode runs the same code on tiny shapes on the CPU. `--out docs` puts its table (gpu.md) where the
next `make bench` includes it here. Apply TeaCache's `cache_device` cpu is measured there; Apply Cache-DiT's
(an optional input now) is not measured yet.
"""


def machine() -> dict[str, str]:
    comfyui = "unknown"
    try:
        import comfyui_version

        comfyui = comfyui_version.__version__
    except ImportError:
        pass
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": str(os.cpu_count()), "torch": torch.__version__, "torch_threads": str(torch.get_num_threads()),
        "comfyui": comfyui, "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
    }


def curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by curve, each sorted by block fraction (fewest blocks first)."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["curve"], []).append(row)
    return {name: sorted(points, key=lambda r: r["block_fraction"]) for name, points in grouped.items()}


def at_fraction(points: list[dict], fraction: float) -> float | None:
    """A curve's PSNR at ``fraction`` of the blocks, linearly between its two nearest settings that changed the
    result (a bit-identical setting has no finite PSNR to interpolate); None when the sweep has no such
    setting on both sides."""
    points = [p for p in points if p["psnr_mean"] < PSNR_CAP]
    for low, high in itertools.pairwise(points):
        if low["block_fraction"] <= fraction <= high["block_fraction"]:
            span = high["block_fraction"] - low["block_fraction"]
            w = 0.0 if span == 0 else (fraction - low["block_fraction"]) / span
            return low["psnr_mean"] * (1 - w) + high["psnr_mean"] * w
    return None


def _db(value: float | None) -> str:
    if value is None:
        return "not reached"
    return "identical" if value >= PSNR_CAP else f"{value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def at_fraction_worst(points: list[dict], fraction: float) -> float | None:
    """`at_fraction` of the curve's worst-sample PSNR."""
    return at_fraction([{**p, "psnr_mean": p["psnr_min"]} for p in points], fraction)


def matched_table(rows: list[dict]) -> tuple[str, list[str]]:
    """PSNR (pooled / worst sample) of every curve at 1.5x-5x fewer block evaluations, and sentences comparing
    with EasyCache."""
    by_curve = {k: v for k, v in curves(rows).items() if k != "uncached"}
    body = [[name] + [_pair(at_fraction(points, 1 / x), at_fraction_worst(points, 1 / x)) for x in MATCHED]
            for name, points in by_curve.items()]
    verdicts = []
    for x in MATCHED:
        easy = at_fraction(by_curve.get("EasyCache", []), 1 / x)
        ours = {n: at_fraction(p, 1 / x) for n, p in by_curve.items() if n not in OURS_EXCLUDED}
        ours = {n: v for n, v in ours.items() if v is not None}
        if not ours:
            verdicts.append(f"{x:g}x: no method of ours reaches this compute in the sweep.")
            continue
        best = max(ours, key=ours.get)
        if easy is None:
            verdicts.append(f"{x:g}x: best ours {best} {_db(ours[best])} dB; EasyCache's sweep does not reach it.")
            continue
        below = ", ".join(f"{n} ({v - easy:+.1f} dB)" for n, v in ours.items() if v < easy)
        verdicts.append(f"{x:g}x: best ours {best} {_db(ours[best])} dB vs EasyCache {_db(easy)} dB "
                        f"({ours[best] - easy:+.1f} dB)" + (f"; below EasyCache: {below}." if below else "."))
    header = ["method"] + [f"{x:g}x fewer blocks: PSNR dB (pooled / worst)" for x in MATCHED]
    return _table(header, body), verdicts


def _pair(pooled: float | None, worst: float | None) -> str:
    return "not reached" if pooled is None else f"{_db(pooled)} / {_db(worst)}"


def best_of_ours(rows: list[dict], x: float) -> tuple[str, float] | None:
    """The curve of ours with the highest pooled PSNR at `x` fewer blocks, and that PSNR."""
    ours = {n: at_fraction(p, 1 / x) for n, p in curves(rows).items() if n not in OURS_EXCLUDED}
    ours = {n: v for n, v in ours.items() if v is not None}
    return max(ours.items(), key=lambda item: item[1]) if ours else None


def goals(fidelity: dict[str, Any]) -> list[str]:
    """Per goal: whether every fixture reaches it, with the best curve and its PSNR per fixture."""
    lines = []
    for x, target in GOALS:
        best = {fixture: best_of_ours(data["rows"], x) for fixture, data in fidelity.items()}
        met = all(b is not None and b[1] >= target for b in best.values())
        parts = [f"{f} " + ("not reached" if b is None else f"{b[1]:.1f} dB ({b[0]})") for f, b in best.items()]
        lines.append(f"- {x:g}x fewer blocks at >= {target:g} dB: **{'met' if met else 'not met'}**: " + "; ".join(parts))
    x, margin = GOAL_OVER_EASYCACHE
    parts, met = [], True
    for fixture, data in fidelity.items():
        best = best_of_ours(data["rows"], x)
        easy = at_fraction(curves(data["rows"]).get("EasyCache", []), 1 / x)
        if best is None or easy is None:
            met = False
            parts.append(f"{fixture}: " + ("ours not reached" if best is None else "EasyCache not reached"))
            continue
        met &= best[1] - easy >= margin
        parts.append(f"{fixture}: {best[1] - easy:+.1f} dB ({best[0]} vs EasyCache {easy:.1f} dB)")
    lines.append(f"- {margin:g} dB above EasyCache at {x:g}x: **{'met' if met else 'not met'}**: " + "; ".join(parts))
    return lines


def calibrator_forecasts(rows: list[dict]) -> list[str]:
    """Where a calibrator does worse than plain reuse: each cadence setting against reuse on the very same steps."""
    cadence = [r for r in rows if "cadence" in r["curve"]]
    reuse = {r["setting"]: r for r in cadence if "+" not in r["curve"]}
    lines = []
    for name, points in curves([r for r in cadence if "+" in r["curve"]]).items():
        worse = [f"{p['setting'].split()[0]} cached per computed ({1 / p['block_fraction']:.2f}x, "
                 f"{p['psnr_mean'] - reuse[p['setting']]['psnr_mean']:+.1f} dB)"
                 for p in points if p["psnr_mean"] < reuse[p["setting"]]["psnr_mean"]]
        lines.append(f"- {name.split(' + ', 1)[1]}: " + ("worse than plain reuse at " + ", ".join(worse) if worse
                                                      else "never worse than plain reuse, at every cadence"))
    return lines


def memory_table(copies: dict[str, float]) -> str:
    body = [["none (plain reuse)", "1.0"]] + [[name, f"{value:.1f}"] for name, value in copies.items()]
    return _table(["calibrator", "memory per cached stream (copies of the stream)"], body)


def full_table(rows: list[dict]) -> str:
    body = [[r["curve"], r["setting"], f"{r['block_fraction']:.3f}", f"{1 / r['block_fraction']:.2f}x",
             _db(r["psnr_mean"]), _db(r["psnr_min"]), f"{r['ssim_mean']:.4f}"] for r in rows]
    return _table(["method", "setting", "blocks executed", "fewer blocks", "PSNR dB (pooled)", "PSNR dB worst sample",
                   "SSIM mean"], body)


def timing_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        overhead = r["curve"] == "overhead"
        cpu_speedup = r["cpu_speedup"]
        body.append([
            r["curve"], r["setting"], f"{r['block_fraction']:.3f}", f"{r['bound']:.2f}x",
            f"{r['wall_s']:.2f}", f"{r['speedup']:.2f}x", f"{r['efficiency']:.2f}",
            f"{r['cpu_s']:.2f}", f"{cpu_speedup:.2f}x",
            f"overhead {100 * (1 / cpu_speedup - 1):+.1f} %" if overhead else f"{cpu_speedup / r['bound']:.2f}",
        ])
    return _table(["method", "setting", "blocks executed", "bound 1/blocks", "wall s", "wall speedup",
                   "wall speedup / bound", "CPU s", "CPU speedup", "CPU speedup / bound"], body)


def speed_summary(timing: dict[str, Any]) -> str:
    """One sentence per fixture: how close skipping gets to its bound, and what never-skipping costs."""
    lines = []
    for fixture, data in timing.items():
        rows = data["rows"]
        skipping = [r for r in rows if r["curve"] not in ("uncached", "overhead")]
        overheads = [100 * (1 / r["cpu_speedup"] - 1) for r in rows if r["curve"] == "overhead"]
        ours = [100 * (1 / r["cpu_speedup"] - 1) for r in rows if r["curve"] == "overhead"
                and not r["setting"].startswith("EasyCache")]
        lines.append(
            f"- {fixture}: wall speedup / bound {min(r['efficiency'] for r in skipping):.2f}-"
            f"{max(r['efficiency'] for r in skipping):.2f} (CPU time "
            f"{min(r['cpu_speedup'] / r['bound'] for r in skipping):.2f}-"
            f"{max(r['cpu_speedup'] / r['bound'] for r in skipping):.2f}); the blocks are "
            f"{100 * data['block_share']:.1f} % of the step, which alone caps it near "
            f"{1 / (1 + (1 - data['block_share']) * 1.5):.2f} at 2.5x. Never-skipping overhead (CPU): ours "
            f"{min(ours):+.1f} to {max(ours):+.1f} %, all methods {min(overheads):+.1f} to {max(overheads):+.1f} %."
        )
    return "\n".join(lines)


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for name, points in curves(rows).items():
        if name == "uncached":
            continue
        style = {"color": "black", "linestyle": "--", "linewidth": 2} if name == "EasyCache" else {}
        ax.plot([1 / p["block_fraction"] for p in points], [min(p["psnr_mean"], PSNR_CAP) for p in points],
                marker="o", markersize=4, label=name, **style)
    for x in MATCHED:
        ax.axvline(x, color="grey", linewidth=0.5)
    ax.set_xlabel("fewer transformer block evaluations than uncached (x)")
    ax.set_ylabel("PSNR of the final latent vs uncached (dB, pooled over samples)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def calibration_section(report: Path) -> list[str]:
    """The fit quality lines of `bench/calibration.py`'s report (docs/calibration.md), with a link to it."""
    if not report.exists():
        return ["## TeaCache calibration", "", "Not measured yet: run `bench/calibration.py`.", ""]
    lines = report.read_text().splitlines()
    kept = [line for line in lines if line.startswith(("### ", "- R²"))]
    return ["## TeaCache calibration", "",
            (f"How well coefficients fitted by the Calibrate TeaCache node predict the output change, from "
             f"[{report.name}]({report.name}) (`bench/calibration.py`; the fidelity at a target speedup with "
             "fitted vs borrowed coefficients is there too):"), "", *kept, ""]


CONTEXT_WINDOWS_INTRO = (
    "Each context window caches against the same window in earlier steps (one state per window and CFG "
    "branch), so a long video through ComfyUI's context windows should save what a short one saves, at the "
    "same fidelity. From [context_windows.md](context_windows.md) (`bench/context_windows.py`):"
)


def context_windows_section(report: Path) -> list[str]:
    """`bench/context_windows.py`'s report (docs/context_windows.md) as a section."""
    if not report.exists():
        return ["## Context windows", "", "Not measured yet: run `bench/context_windows.py`.", ""]
    return ["## Context windows", "", CONTEXT_WINDOWS_INTRO, "", report.read_text().strip(), ""]


def write(results: dict[str, Any], out: Path, fidelity: tuple, timing_specs: dict, timing_steps: int) -> str:
    """Writes out/benchmarks.md and the plots; returns the summary printed on the console."""
    info = results["machine"]
    where = (f"{info['processor']}, {info['cpus']} CPUs ({info['torch_threads']} torch threads), no GPU; "
             f"{info['platform']}; torch {info['torch']}; ComfyUI {info['comfyui']}; {info['date']}")
    mode = "`bench/run.py --quick`" if results["quick"] else "`make bench` (bench/run.py)"
    md = [
        "# Benchmarks",
        "",
        (f"Measured on {where}, by {mode} in {results['duration_s'] / 60:.0f} minutes. Regenerate with "
        "`make bench`; raw numbers in `benchmarks.json`."),
        "",
        HOW,
    ]
    summary = []
    for setup in fidelity:
        data = results["fidelity"][setup.fixture]
        rows = data["rows"]
        image = f"bench-{setup.fixture}.png"
        title = (f"trained {setup.fixture} fixture, {setup.steps} Euler steps, cfg {setup.cfg:g} "
                 f"({info['date']}, CPU)")
        plot(rows, title, out / image)
        table, verdicts = matched_table(rows)
        md += [f"## Fidelity: trained {setup.fixture} fixture", "",
               (f"{setup.steps} steps, Euler, simple schedule, cfg {setup.cfg:g}; DBCache max_continuous_cached_steps 3, "
               f"warm-up 4 steps unless the curve says otherwise; F{setup.fn_large}B0 stands in for F8B0 (the fixture "
               f"has {setup.blocks} blocks)."), "",
               f"![speed-fidelity, {setup.fixture}]({image})", "", "At matched compute:", "", table, "",
               *[f"- {v}" for v in verdicts], "", "Calibrators against plain reuse on the same cadence:", "",
               *calibrator_forecasts(rows), "", "<details><summary>Every setting</summary>", "",
               full_table(rows), "", "</details>", ""]
        summary += [f"== fidelity: {setup.fixture} ==", table, *verdicts, ""]
    md += ["## Goals: 3-5x", "", *goals(results["fidelity"]), ""]
    summary += ["== goals ==", *goals(results["fidelity"]), ""]
    if "calibrator_memory" in results:
        md += ["## Calibrator memory", "",
               ("What each calibrator keeps per cached stream and CFG branch, in copies of that stream (e.g. Flux's "
                "image tokens x hidden width), measured on cache-dit's own classes after a 28-step run:"), "",
               memory_table(results["calibrator_memory"]), ""]
    md += ["## Speed summary", "", speed_summary(results["timing"]), ""]
    for fixture, data in results["timing"].items():
        spec = timing_specs[fixture]
        table = timing_table(data["rows"])
        md += [f"## Speed: random-weight {fixture}-shaped timing model", "",
               (f"unet_config {spec.unet_config}, latent {list(spec.latent_shape)}, {timing_steps} Euler steps, cfg 1, "
               f"medians over {results['repeats']} pairs. The blocks take "
               f"{100 * data['block_share']:.1f} % of an uncached run's wall time, so even a free skip can reach at "
               f"most 1 / (1 - {data['block_share']:.3f} + {data['block_share']:.3f} x blocks)."), "", table, ""]
        summary += [f"== timing: {fixture} (blocks {100 * data['block_share']:.1f} % of wall) ==", table, ""]
    md += calibration_section(out / "calibration.md")
    md += context_windows_section(out / "context_windows.md")
    gpu = out / "gpu.md"
    md += ["## On a GPU", "", gpu.read_text() if gpu.exists() else GPU_NOT_RUN]
    (out / "benchmarks.md").write_text("\n".join(md) + "\n")
    return "\n".join(summary)
