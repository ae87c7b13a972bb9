"""`make bench`: speed and fidelity of every caching method against the uncached model and ComfyUI's EasyCache.

    .venv/bin/python bench/run.py            # full run (about 30 minutes on 2 CPU cores)
    .venv/bin/python bench/run.py --quick    # thinner sweeps, fewer samples and repeats (a few minutes)

Everything runs in-process in the real ComfyUI: its KSampler (``nodes.common_ksampler``, Euler, simple
schedule), its ModelPatcher, its EasyCache node and this pack's nodes, exactly as a workflow calls them.

- Fidelity runs on the trained fixtures (``tests/trained_models.py``): every method and sweep, several
  classes and seeds; PSNR and SSIM of the final latent against the uncached latent of the same seed,
  and the exact fraction of transformer blocks executed (counted by torch hooks on the blocks).
- Timing runs on random-weight models with the real block structure, sized so that the blocks dominate
  the step: wall time (median of repeats, interleaved across methods, as a ratio to uncached measured in
  the same run) against the bound the block fraction sets, and the machinery's overhead when it never skips.

Writes docs/benchmarks.md, docs/benchmarks.json and docs/bench-*.png, and prints the summary tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import setup_comfy  # noqa: F401  (ComfyUI on sys.path, CPU)

# isort: split
import comfy.utils
import methods as m
import report
import torch
import trained_models as fx
from metrics import count_blocks, psnr_of, relative_mse, ssim
from runs import held_tensors
from tiny_models import _fill_weights as fill_random_weights

import nodes

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SAMPLER, SCHEDULER = "euler", "simple"


@dataclass(frozen=True)
class FidelitySetup:
    """How a trained fixture is sampled, and its method sweeps."""

    fixture: str
    steps: int
    cfg: float
    blocks: int
    fn_large: int  # the "many probe blocks" DBCache variant (F8B0 on real models, with 57 blocks)
    teacache_thresholds: tuple[float, ...]


FLUX_TEACACHE = (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.2)
FIDELITY = (
    FidelitySetup("flux", 28, 1.0, 6, 2, FLUX_TEACACHE),
    FidelitySetup("flux_deep", 28, 1.0, 12, 4, FLUX_TEACACHE),
    FidelitySetup("wan", 30, 5.0, 6, 2, (0.02, 0.04, 0.06, 0.08, 0.12, 0.16, 0.24, 0.4)),
)

# Timing fixtures: random weights, Flux-shaped 8 double + 16 single blocks and Wan-shaped 16 blocks.
TIMING_SPECS = {
    "flux": fx.FixtureSpec(
        fx.SPECS["flux"].config,
        fx.SPECS["flux"].unet_config | {"depth": 8, "depth_single_blocks": 16},
        side=48, frames=None,
    ),
    "wan": fx.FixtureSpec(
        fx.SPECS["wan"].config,
        fx.SPECS["wan"].unet_config | {"num_layers": 16},
        side=24, frames=4,
    ),
}
TIMING_STEPS = 20
BLOCK_LISTS = ("double_blocks", "single_blocks", "blocks")


def blocks_of(model: Any) -> list[torch.nn.Module]:
    dm = model.model.diffusion_model
    return [block for name in BLOCK_LISTS for block in getattr(dm, name, [])]


def sample(model: Any, fixture: str, latent: dict, class_index: int, seed: int, steps: int, cfg: float) -> torch.Tensor:
    """One KSampler run, as the KSampler node makes it; the final LATENT's samples."""
    positive = fx.conditioning(fixture, class_index)
    negative = fx.conditioning(fixture, None)
    (out,) = nodes.common_ksampler(model, seed, steps, cfg, SAMPLER, SCHEDULER, positive, negative, latent)
    return out["samples"]


@dataclass
class FidelityRow:
    curve: str
    setting: str
    block_fraction: float  # blocks executed / uncached blocks, over all samples
    psnr_mean: float  # of the mean relative MSE over samples (bit-identical samples count as zero error)
    psnr_min: float  # the worst sample
    ssim_mean: float
    wall_s: float  # median wall time of one sample (small model: sampler overhead included)


def run_fidelity(setup: FidelitySetup, quick: bool) -> list[FidelityRow]:
    model = fx.load_model(setup.fixture)
    blocks = blocks_of(model)
    latent = fx.empty_latent(setup.fixture)
    samples = [(c, s) for c in ((0, 5) if quick else (0, 2, 5, 7)) for s in ((0,) if quick else (0, 1))]
    sample(model, setup.fixture, latent, 0, 0, 2, setup.cfg)  # loads the model outside the timings
    references: list[torch.Tensor] = []
    reference_blocks = 0
    rows = []
    for method in m.fidelity_methods(setup.fn_large, setup.teacache_thresholds, quick):
        patched = method.apply(model)
        errors, ssims, walls, executed = [], [], [], 0
        for i, (class_index, seed) in enumerate(samples):
            with count_blocks(blocks) as counter:
                start = time.perf_counter()
                out = sample(patched, setup.fixture, latent, class_index, seed, setup.steps, setup.cfg)
                walls.append(time.perf_counter() - start)
            executed += counter[0]
            if method.curve == m.UNCACHED:
                references.append(out)
                reference_blocks += counter[0]
            errors.append(relative_mse(out, references[i]))
            ssims.append(ssim(out, references[i]))
        row = FidelityRow(method.curve, method.setting, executed / reference_blocks,
                          min(psnr_of(statistics.fmean(errors)), report.PSNR_CAP),
                          min(psnr_of(max(errors)), report.PSNR_CAP), statistics.fmean(ssims), statistics.median(walls))
        logger.info("%s %s: blocks %.3f, PSNR %.1f dB (min %.1f), SSIM %.4f", setup.fixture, method.label,
                    row.block_fraction, row.psnr_mean, row.psnr_min, row.ssim_mean)
        rows.append(row)
    return rows


def timing_methods() -> list[m.Method]:
    """Uncached; each method on but never skipping (its overhead); each method at a fixed, forced schedule."""
    never = 1e-9  # a threshold no change is below: every step computes, the machinery still runs
    return [
        m.uncached(),
        m.Method("overhead", "EasyCache reuse_threshold 0", m.easycache(0.0).apply),
        m.Method("overhead", "TeaCache rel_l1_thresh 1e-9", m.teacache(never).apply),
        m.Method("overhead", "DBCache F1B0 threshold 1e-9, no warm-up",
                 m.dbcache(1, never, max_warmup_steps=0).apply),
        *[m.Method("overhead", f"DBCache F1B0{m.calibrator_name(name, order)} threshold 1e-9, no warm-up",
                   m.dbcache(1, never, calibrator=name, taylorseer_order=order, max_warmup_steps=0).apply)
          for name, order in m.CALIBRATORS[1:]],
        *[m.scm(p, "static") for p in m.SCM_PRESETS],
        # threshold >= 1 caches every step warm-up and max_continuous allow
        *[m.dbcache(1, 1.0, calibrator=name, taylorseer_order=order) for name, order in m.CALIBRATORS],
        m.teacache(1.0, coefficients="1, 0"),
        m.easycache(3.0),
    ]


@dataclass
class TimingRow:
    curve: str
    setting: str
    block_fraction: float
    wall_s: float  # median over repeats
    speedup: float  # uncached median / this median
    bound: float  # 1 / block_fraction
    efficiency: float  # speedup / bound
    cpu_s: float  # median process CPU time: with one torch thread, barely touched by other jobs on the machine
    cpu_speedup: float


def block_share(model: Any, fixture: str, spec: fx.FixtureSpec) -> float:
    """Share of an uncached run's wall time spent inside the transformer blocks (timed by torch hooks)."""
    spent, starts = [0.0], {}

    def before(module: torch.nn.Module, args: object) -> None:
        starts[id(module)] = time.perf_counter()

    def after(module: torch.nn.Module, args: object, output: object) -> None:
        spent[0] += time.perf_counter() - starts.pop(id(module))

    handles = [h for b in blocks_of(model) for h in (b.register_forward_pre_hook(before), b.register_forward_hook(after))]
    try:
        start = time.perf_counter()
        sample(model, fixture, fx.empty_latent(spec), 0, 0, TIMING_STEPS, 1.0)
        return spent[0] / (time.perf_counter() - start)
    finally:
        for handle in handles:
            handle.remove()


def run_timing(fixture: str, repeats: int) -> tuple[list[TimingRow], float]:
    spec = TIMING_SPECS[fixture]
    base = fx.build(spec)
    fill_random_weights(base.diffusion_model, f"timing-{fixture}", 0)
    model = fx.patcher(base)
    latent = fx.empty_latent(spec)
    methods = timing_methods()
    patched = [method.apply(model) for method in methods]
    sample(model, fixture, latent, 0, 0, 2, 1.0)  # load and warm up
    fractions = []
    for p in patched:  # one counted run each: the schedule does not depend on timing
        with count_blocks(blocks_of(model)) as counter:
            sample(p, fixture, latent, 0, 0, TIMING_STEPS, 1.0)
        fractions.append(counter[0])
    fractions = [n / fractions[0] for n in fractions]

    def timed(p: Any) -> tuple[float, float]:
        start, start_cpu = time.perf_counter(), time.process_time()
        sample(p, fixture, latent, 0, 0, TIMING_STEPS, 1.0)
        return time.perf_counter() - start, time.process_time() - start_cpu

    # Each method runs in pairs with uncached, in alternating order, so that drifting machine load and any
    # cost of switching between MODEL clones fall on both sides alike; ratios are medians over the pairs.
    rows = []
    for method, p, fraction in zip(methods, patched, fractions):
        pairs = []
        for repeat in range(repeats):
            order = (model, p) if repeat % 2 == 0 else (p, model)
            times = dict(zip((id(order[0]), id(order[1])), (timed(order[0]), timed(order[1]))))
            pairs.append((times[id(model)], times[id(p)]))
        wall = statistics.median(t[1][0] for t in pairs)
        cpu = statistics.median(t[1][1] for t in pairs)
        speedup = statistics.median(ref[0] / mine[0] for ref, mine in pairs)
        cpu_speedup = statistics.median(ref[1] / mine[1] for ref, mine in pairs)
        rows.append(TimingRow(method.curve, method.setting, fraction, wall, speedup, 1 / fraction, speedup * fraction,
                              cpu, cpu_speedup))
        logger.info("%s timing %s: %.3fx wall, %.3fx CPU", fixture, method.label, speedup, cpu_speedup)
    return rows, block_share(model, fixture, spec)


def calibrator_memory(steps: int = 28, shape: tuple[int, ...] = (1, 64, 128)) -> dict[str, float]:
    """What each calibrator keeps per cached stream, in copies of the stream (plain reuse keeps one): cache-dit's
    class, built as the node builds it, fed a run of computed and cached steps."""
    from dit_cache.caching.calibrators import new_calibrator
    from dit_cache.caching.dbcache import DBCacheConfig

    copies = {}
    for name, order in m.CALIBRATORS[1:]:
        calibrator = new_calibrator(DBCacheConfig(calibrator=name, taylorseer_order=order).calibrator_config())
        for step in range(steps):
            calibrator.mark_step_begin()
            if step < 4 or step % 3 == 0:
                calibrator.update(torch.randn(shape))
            else:
                calibrator.approximate()
        stream_bytes = torch.zeros(shape).nbytes
        copies[m.calibrator_name(name, order).removeprefix(" + ")] = (
            sum(t.nbytes for t in held_tensors(calibrator)) / stream_bytes
        )
    return copies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="thin sweeps, 2 samples, 2 repeats (a few minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="timed pairs (uncached, method) per method (default 3, quick 2)")
    parser.add_argument("--out", type=Path, default=DOCS, help="where benchmarks.md and the plots go")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from --out's benchmarks.json")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((args.out / "benchmarks.json").read_text())
        print(report.write(results, args.out, FIDELITY, TIMING_SPECS, TIMING_STEPS))
        return
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", force=True)
    logger.setLevel(logging.INFO)
    comfy.utils.PROGRESS_BAR_ENABLED = False
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    started = time.monotonic()
    results: dict[str, Any] = {"machine": report.machine(), "quick": args.quick, "repeats": repeats,
                               "fidelity": {}, "timing": {}}
    for setup in FIDELITY:
        results["fidelity"][setup.fixture] = {
            "setup": asdict(setup), "rows": [asdict(r) for r in run_fidelity(setup, args.quick)]}
    results["calibrator_memory"] = calibrator_memory()
    for fixture in TIMING_SPECS:
        rows, share = run_timing(fixture, repeats)
        results["timing"][fixture] = {"rows": [asdict(r) for r in rows], "block_share": share}
    results["duration_s"] = time.monotonic() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    print(report.write(results, args.out, FIDELITY, TIMING_SPECS, TIMING_STEPS))


if __name__ == "__main__":
    main()
