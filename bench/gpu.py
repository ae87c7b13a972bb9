"""`make bench-gpu`: real-size DiTs with random bf16 weights on one GPU: speed against the compute bound,
per-step overhead, peak memory and host synchronisations per step, for each method.

    .venv/bin/python bench/gpu.py                 # on a GPU machine: fits one 8-minute call on an H100/H200
    .venv/bin/python bench/gpu.py --smoke         # the same code paths at tiny sizes, on the CPU (seconds)

Models are ComfyUI's own classes at their released sizes, weights random (speed does not depend on them):
Flux-dev (19 double + 38 single blocks) at 1024x1024, Wan 2.1 14B at 480p x 33 frames, Qwen-Image at
1024x1024; one model at a time, freed before the next. Each is sampled uncached, with each method on but
never skipping (its overhead), and with schedules that skip a known share of the blocks: SCM static masks,
DBCache at threshold 1 (caches whatever warm-up and max_continuous_cached_steps allow) and TeaCache with
identity coefficients at a high threshold. Random weights make threshold-driven skipping arbitrary, so
only these forced schedules say anything about speed; fidelity is for `bench/run.py` on trained fixtures.

Per run: wall time, blocks executed (counted by hooks), speedup / (1 / blocks), peak GPU memory of the
main device, and host synchronisations (``torch.cuda.set_sync_debug_mode``) per step. Results go to
``--out`` (default ``$OUT`` or ``bench-gpu-out/``) as JSON and markdown after every model, so a call cut
short still returns what it measured. Apply TeaCache also runs with ``cache_device`` cpu (the only
node with that input so far), to show what keeping the cache on the host saves.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SMOKE_STEPS = 3


@dataclass(frozen=True)
class Shape:
    """A released model's detected unet_config, its conditioning and latent at the benchmark's resolution."""

    config: str  # class name in comfy.supported_models
    unet_config: dict[str, Any]
    latent: tuple[int, ...]
    context: tuple[int, int]  # text tokens, width
    pooled: int | None
    steps: int


REAL = {
    "flux-dev": Shape(
        "Flux",
        {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
         "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19, "depth_single_blocks": 38,
         "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True},
        (1, 16, 128, 128), (512, 4096), 768, 20,
    ),
    "qwen-image": Shape(
        "QwenImage",
        {"image_model": "qwen_image", "in_channels": 64, "out_channels": 16, "num_layers": 60,
         "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 3584,
         "axes_dims_rope": (16, 56, 56)},
        (1, 16, 1, 128, 128), (256, 3584), None, 20,
    ),
    "wan2.1-14b": Shape(
        "WAN21_T2V",
        {"image_model": "wan2.1", "model_type": "t2v", "dim": 5120, "ffn_dim": 13824, "num_heads": 40,
         "num_layers": 40, "patch_size": (1, 2, 2), "freq_dim": 256, "window_size": (-1, -1), "qk_norm": True,
         "cross_attn_norm": True, "eps": 1e-6, "in_dim": 16, "out_dim": 16},
        (1, 16, 9, 60, 104), (512, 4096), None, 12,
    ),
}


def smoke_shape(shape: Shape) -> Shape:
    """The same family at a tiny size (12 blocks, small width and latent), for a CPU check of the script."""
    u = dict(shape.unet_config)
    if shape.config == "Flux":
        u |= {"hidden_size": 128, "num_heads": 2, "axes_dim": [8, 28, 28], "depth": 4, "depth_single_blocks": 8}
        latent = (1, 16, 16, 16)
    elif shape.config == "QwenImage":
        u |= {"num_layers": 12, "attention_head_dim": 64, "num_attention_heads": 2, "axes_dims_rope": (8, 28, 28)}
        latent = (1, 16, 1, 16, 16)
    else:
        u |= {"dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 12}
        latent = (1, 16, 3, 8, 8)
    return Shape(shape.config, u, latent, (8, shape.context[1]), shape.pooled, max(shape.steps // 2, 8))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, on the CPU unless a GPU is there")
    parser.add_argument("--models", nargs="+", choices=list(REAL), default=list(REAL))
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per method (median)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-gpu-out")))
    return parser.parse_args()


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None:
    import torch as _torch

    os.environ["DIT_CACHE_BENCH_DEVICE"] = "gpu" if _torch.cuda.is_available() else "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import setup_comfy  # noqa: F401  (ComfyUI on sys.path; CPU only when no GPU)

# isort: split
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models
import comfy.utils
import methods as m
import torch
from metrics import count_blocks

import nodes

BLOCK_LISTS = ("double_blocks", "single_blocks", "blocks", "transformer_blocks")


@torch.no_grad()
def fill_random(module: torch.nn.Module, seed: int = 0) -> None:
    """Random weights on the model's own device: matrices with std 1/sqrt(fan_in) (activations keep unit scale),
    norms one, other parameters std 0.02. Fast (no host copies), unlike the test fixtures' per-name draws."""
    torch.manual_seed(seed)
    for sub in module.modules():
        is_norm = "Norm" in type(sub).__name__
        for name, param in sub.named_parameters(recurse=False):
            if is_norm:
                param.fill_(1.0 if name == "weight" else 0.0)
            elif name == "weight" and param.ndim >= 2:
                param.normal_(0.0, param[0].numel() ** -0.5)
            else:
                param.normal_(0.0, 0.02)


def build(shape: Shape, dtype: torch.dtype) -> Any:
    device = comfy.model_management.get_torch_device()
    model_config = getattr(comfy.supported_models, shape.config)(dict(shape.unet_config))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({}, "", device=device)
    fill_random(model.diffusion_model)
    return comfy.model_patcher.ModelPatcher(model, load_device=device,
                                            offload_device=comfy.model_management.unet_offload_device())


def conditioning(shape: Shape, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    extras = {"pooled_output": torch.randn(1, shape.pooled, generator=g)} if shape.pooled else {}
    return [[torch.randn(1, *shape.context, generator=g), extras]]


def methods() -> list[m.Method]:
    never = 1e-9
    return [
        m.uncached(),
        m.Method("overhead", "TeaCache never skipping", m.teacache(never).apply),
        m.Method("overhead", "DBCache F1B0 never caching", m.dbcache(1, never, max_warmup_steps=0).apply),
        m.scm("medium", "static"),
        m.scm("fast", "static"),
        m.dbcache(1, 1.0),
        m.dbcache(8, 1.0),
        m.teacache(1.0, coefficients="1, 0"),
        m.teacache(1.0, coefficients="1, 0", cache_device="cpu"),
    ]


@dataclass
class GpuRow:
    model: str
    method: str
    steps: int
    block_fraction: float
    wall_s: float
    speedup: float
    efficiency: float  # speedup * block_fraction
    overhead_ms_per_step: float  # (wall - uncached wall) / steps: meaningful for the never-skipping rows
    peak_gib: float  # main device
    syncs_per_step: float | None  # host synchronisations per step (CUDA only)


def timed_run(model: Any, shape: Shape, blocks: list[torch.nn.Module]) -> tuple[float, int, float, float | None]:
    """(wall s, blocks executed, peak GiB, host syncs per step) of one sampling run."""
    cuda = torch.cuda.is_available()
    latent = {"samples": torch.zeros(shape.latent)}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with count_blocks(blocks) as counter, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        start = time.perf_counter()
        nodes.common_ksampler(model, 0, shape.steps, 1.0, "euler", "simple", conditioning(shape, 1),
                              conditioning(shape, 2), latent)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught) / shape.steps if cuda else None
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    return wall, counter[0], peak, syncs


def bench_model(name: str, shape: Shape, repeats: int) -> list[GpuRow]:
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = build(shape, dtype)
    blocks = [b for attr in BLOCK_LISTS for b in getattr(model.model.diffusion_model, attr, [])]
    timed_run(model, Shape(**{**asdict(shape), "steps": 2}), blocks)  # load, allocate, warm up kernels
    results = []
    for method in methods():
        patched = method.apply(model)
        runs = [timed_run(patched, shape, blocks) for _ in range(repeats)]
        results.append((method, statistics.median(r[0] for r in runs), runs[0][1], max(r[2] for r in runs), runs[0][3]))
        print(f"{name} {method.label}: {results[-1][1]:.2f} s, blocks {runs[0][1]}, peak {results[-1][3]:.1f} GiB, "
              f"syncs/step {runs[0][3]}", flush=True)
    base_wall, base_blocks = results[0][1], results[0][2]
    rows = []
    for method, wall, executed, peak, syncs in results:
        fraction = executed / base_blocks
        speedup = base_wall / wall
        rows.append(GpuRow(name, method.label, shape.steps, fraction, wall, speedup, speedup * fraction,
                           1000 * (wall - base_wall) / shape.steps, peak, syncs))
    del model, results
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    return rows


def markdown(rows: list[GpuRow], device: str) -> str:
    lines = [f"Device: {device}; torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             ("| model | method | steps | blocks executed | wall s | speedup | speedup / bound | overhead ms/step "
             "| peak GiB | host syncs/step |"), "|" + "---|" * 10]
    for r in rows:
        syncs = "n/a" if r.syncs_per_step is None else f"{r.syncs_per_step:.1f}"
        lines.append(f"| {r.model} | {r.method} | {r.steps} | {r.block_fraction:.3f} | {r.wall_s:.2f} | "
                     f"{r.speedup:.2f}x | {r.efficiency:.2f} | {r.overhead_ms_per_step:+.1f} | {r.peak_gib:.1f} | "
                     f"{syncs} |")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> None:
    comfy.utils.PROGRESS_BAR_ENABLED = False
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke run)"
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[GpuRow] = []
    for name in args.models:
        shape = smoke_shape(REAL[name]) if args.smoke else REAL[name]
        rows += bench_model(name, shape, args.repeats)
        (args.out / "gpu.json").write_text(json.dumps({"device": device, "rows": [asdict(r) for r in rows]}, indent=1))
        (args.out / "gpu.md").write_text(markdown(rows, device))
    print(markdown(rows, device))


if __name__ == "__main__":
    main(ARGS)
