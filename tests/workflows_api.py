"""API-format graphs of one sampling run per family: loader -> cache method -> KSampler -> SaveLatent.

The loader is ComfyUI's own ``UNETLoader`` for the tiny checkpoint files (Wan, HunyuanVideo)
and the test-only ``DiTCacheTest_TinyModel`` for families ComfyUI cannot detect from a tiny
file. ``SaveLatent`` writes the final latent under output/latents/, so a test or the demo
reads back exactly what the server computed.
"""
from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import safetensors.torch
import torch
from comfy_server import checkpoint_name, import_tiny_models

tiny_models = import_tiny_models()

FAMILY_VARIANTS: tuple[str, ...] = ("flux", "wan21_t2v", "wan22_5b", "hunyuan_video", "qwen_image", "z_image")

# Flux and HunyuanVideo are guidance-distilled and Z-Image Turbo runs without CFG; Qwen-Image
# runs at cfg 1 too because TeaCache turns itself off under CFG on Flux and Qwen-Image. Wan
# samples with real CFG, so its positive and negative branches both go through the cache.
CFG: dict[str, float] = {"wan21_t2v": 5.0, "wan22_5b": 5.0}

Link = list[Any]  # [node id, output index]
LOADER, METHOD, POSITIVE, NEGATIVE, LATENT, SAMPLER, SAVE, REPORT, SAVE_REPORT = (
    "loader", "method", "positive", "negative", "latent", "sampler", "save", "report", "save_report"
)


@dataclass(frozen=True)
class EasyCache:
    """ComfyUI's built-in EasyCache node; start/end are its own defaults in ComfyUI 0.3.75."""

    reuse_threshold: float = 0.2
    start_percent: float = 0.15
    end_percent: float = 0.95
    label: ClassVar[str] = "easycache"

    def node(self, model: Link) -> dict[str, Any]:
        return {"class_type": "EasyCache", "inputs": {"model": model, **asdict(self), "verbose": False}}


@dataclass(frozen=True)
class TeaCache:
    """The pack's Apply TeaCache node; fields are typed Any so tests can send invalid values."""

    rel_l1_thresh: Any = 0.2
    model_type: Any = "auto"
    start_percent: Any = 0.0
    end_percent: Any = 1.0
    cache_device: Any = "main_device"
    coefficients: Any = ""
    target_speedup: Any = 0.0
    label: ClassVar[str] = "teacache"

    def node(self, model: Link) -> dict[str, Any]:
        return {"class_type": "DiTCache_ApplyTeaCache", "inputs": {"model": model, **asdict(self)}}


@dataclass(frozen=True)
class CacheDiT:
    """The pack's Apply Cache-DiT node (only the inputs a test sets; the rest keep their defaults)."""

    settings: dict[str, Any]
    label: ClassVar[str] = "cachedit"

    def node(self, model: Link) -> dict[str, Any]:
        defaults = {
            "Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.24,
            "max_warmup_steps": 4, "warmup_interval": 1, "max_cached_steps": -1,
            "max_continuous_cached_steps": 3, "calibrator": "none", "taylorseer_order": 1,
            "calibrator_cache_type": "residual", "scm_preset": "none", "scm_policy": "dynamic",
        }
        return {"class_type": "DiTCache_ApplyCacheDiT", "inputs": {"model": model, **defaults, **self.settings}}


Method = EasyCache | TeaCache | CacheDiT | None


def loader(variant: str) -> dict[str, Any]:
    if variant in tiny_models.FILE_VARIANTS:
        inputs = {"unet_name": checkpoint_name(variant), "weight_dtype": "default"}
        return {"class_type": "UNETLoader", "inputs": inputs}
    return {"class_type": "DiTCacheTest_TinyModel", "inputs": {"variant": variant}}


def graph(
    variant: str,
    method: Method = None,
    *,
    steps: int = 8,
    seed: int = 0,
    size: int = 0,
    lengths: tuple[int, int] = (8, 8),
    cfg: float | None = None,
) -> dict[str, Any]:
    """One text-to-latent run of `variant`, with `method` between the loader and the sampler.

    `size` is the latent side (0 = the family's default); `lengths` the positive and
    negative text lengths (equal lengths let ComfyUI batch both CFG branches in one call).
    """
    nodes: dict[str, Any] = {LOADER: loader(variant)}
    model: Link = [LOADER, 0]
    if method is not None:
        nodes[METHOD] = method.node(model)
        model = [METHOD, 0]
    for node_id, text_seed, length in ((POSITIVE, 1, lengths[0]), (NEGATIVE, 2, lengths[1])):
        nodes[node_id] = {
            "class_type": "DiTCacheTest_Conditioning",
            "inputs": {"variant": variant, "seed": text_seed, "length": length},
        }
    nodes[LATENT] = {"class_type": "DiTCacheTest_Latent", "inputs": {"variant": variant, "batch": 1, "size": size}}
    nodes[SAMPLER] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model, "seed": seed, "steps": steps, "cfg": CFG.get(variant, 1.0) if cfg is None else cfg,
            "sampler_name": "euler", "scheduler": "simple", "positive": [POSITIVE, 0],
            "negative": [NEGATIVE, 0], "latent_image": [LATENT, 0], "denoise": 1.0,
        },
    }
    label = method.label if method is not None else "uncached"
    # A unique prefix per run: each run's latent lands in its own file.
    prefix = f"latents/{variant}_{label}_{uuid.uuid4().hex[:12]}"
    nodes[SAVE] = {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLER, 0], "filename_prefix": prefix}}
    return nodes


def fixture_graph(fixture: str, method: Method, *, class_index: int, seed: int, steps: int, cfg: float) -> dict[str, Any]:
    """One run of a trained fixture (tests/trained_models.py) for `class_index`, the empty prompt as negative.

    With one of our nodes, its Cache report is saved as an image too (SaveImage under output/reports/).
    """
    nodes: dict[str, Any] = {LOADER: {"class_type": "DiTCacheTest_TrainedModel", "inputs": {"fixture": fixture}}}
    model: Link = [LOADER, 0]
    if method is not None:
        nodes[METHOD] = method.node(model)
        model = [METHOD, 0]
    for node_id, index in ((POSITIVE, class_index), (NEGATIVE, -1)):
        nodes[node_id] = {"class_type": "DiTCacheTest_TrainedConditioning",
                          "inputs": {"fixture": fixture, "class_index": index}}
    nodes[LATENT] = {"class_type": "DiTCacheTest_TrainedLatent", "inputs": {"fixture": fixture}}
    nodes[SAMPLER] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model, "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple",
            "positive": [POSITIVE, 0], "negative": [NEGATIVE, 0], "latent_image": [LATENT, 0], "denoise": 1.0,
        },
    }
    label = method.label if method is not None else "uncached"
    prefix = f"{fixture}_{label}_{uuid.uuid4().hex[:12]}"
    nodes[SAVE] = {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLER, 0], "filename_prefix": f"latents/{prefix}"}}
    if isinstance(method, (TeaCache, CacheDiT)):
        nodes[REPORT] = {"class_type": "DiTCache_CacheReport", "inputs": {"model": model, "latent": [SAMPLER, 0]}}
        nodes[SAVE_REPORT] = {"class_type": "SaveImage",
                              "inputs": {"images": [REPORT, 0], "filename_prefix": f"reports/{prefix}"}}
    return nodes


def saved_report(history: dict[str, Any], output_dir: Path) -> Path:
    """The Cache report image that a fixture graph's SaveImage node wrote."""
    (saved,) = history["outputs"][SAVE_REPORT]["images"]
    return Path(output_dir) / saved["subfolder"] / saved["filename"]


def saved_latent(history: dict[str, Any], output_dir: Path) -> torch.Tensor:
    """The latent that the graph's SaveLatent node wrote, read back from the output folder."""
    (saved,) = history["outputs"][SAVE]["latents"]
    path = Path(output_dir) / saved["subfolder"] / saved["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"]
