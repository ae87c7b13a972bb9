"""Sampling a tiny model as a KSampler does, and what a node left on the MODEL: one place for every test.

The transformer_options keys live on the patch classes (`TeaCachePatch.key`, ...); tests name a
method by its short name and never spell a key.
"""
from __future__ import annotations

from typing import Any

import comfy.sample
import tiny_models as tm
import torch
from dit_cache.caching.records import RunSummary
from dit_cache.model_patches.cachedit_patch import CacheDiTPatch
from dit_cache.model_patches.sampling_hooks import installed
from dit_cache.model_patches.teacache_patch import TeaCachePatch
from dit_cache.nodes.cachedit_node import ApplyCacheDiT
from dit_cache.nodes.teacache_node import ApplyTeaCache

PATCHES: dict[str, type] = {"teacache": TeaCachePatch, "cachedit": CacheDiTPatch}
NODES: dict[str, Any] = {"teacache": ApplyTeaCache, "cachedit": ApplyCacheDiT}
METHODS: tuple[str, ...] = tuple(NODES)

IDENTITY = "1, 0"  # TeaCache's rescale(x) = x: thresholds read directly as accumulated relative L1
OFF: dict[str, dict[str, Any]] = {
    "teacache": {"rel_l1_thresh": 0.0},
    "cachedit": {"residual_diff_threshold": 0.0, "max_warmup_steps": 0},
}
"""Each method with caching off: it must be bit-identical to the model it patches."""
EAGER: dict[str, dict[str, Any]] = {
    "teacache": {"rel_l1_thresh": 10.0, "coefficients": IDENTITY},
    "cachedit": {"residual_diff_threshold": 1.0, "max_warmup_steps": 2, "max_continuous_cached_steps": -1},
}
"""Each method caching whatever its rules allow: TeaCache at its widest threshold on the identity rescale,
Cache-DiT on every step after a warm-up of 2."""


def held_tensors(obj: Any, seen: set[int] | None = None) -> list[torch.Tensor]:
    """The tensors an object keeps (in attributes, lists, tuples and dicts), each storage once: what a
    cache-dit calibrator holds, without naming its internals."""
    seen = set() if seen is None else seen
    if isinstance(obj, torch.Tensor):
        key = obj.untyped_storage().data_ptr()
        if key in seen:
            return []
        seen.add(key)
        return [obj]
    if id(obj) in seen:
        return []
    seen.add(id(obj))
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    elif hasattr(obj, "__dict__"):
        children = list(vars(obj).values())
    else:
        return []
    return [t for child in children for t in held_tensors(child, seen)]


def apply(model: Any, method: str, **settings: Any) -> Any:
    """`model` through the method's node with `settings` (the node's defaults for the rest); a new MODEL."""
    (patched,) = NODES[method].execute(model, **settings)
    assert patched is not model
    return patched


def patch_of(model: Any, method: str) -> Any:
    """The `method` ("teacache" or "cachedit") patch on this MODEL; fails the test if there is none."""
    patch = installed(model, PATCHES[method])
    assert patch is not None, f"no {method} patch on this MODEL"
    return patch


def last_run(model: Any, method: str) -> RunSummary | None:
    return patch_of(model, method).last_run


def sample(model: Any, variant: str, *, steps: int = 8, cfg: float = 1.0, seed: int = 0,
           lengths: tuple[int, int] = (8, 8), prompt_seed: int = 1, size: int | None = None,
           sampler: str = "euler", latent: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
    """`comfy.sample.sample` on `variant`'s tiny latent and prompts (positive `prompt_seed`, negative 2).

    Equal text lengths let ComfyUI batch both CFG branches into one call (`tm.SPLIT_LENGTHS` splits
    them); `kw` goes to ComfyUI (e.g. start_step, denoise, noise, positive, negative).
    """
    latent = tm.latent(variant, size=size)["samples"] if latent is None else latent
    noise = kw.pop("noise", None)
    noise = comfy.sample.prepare_noise(latent, seed) if noise is None else noise
    positive = kw.pop("positive", None) or tm.conditioning(variant, seed=prompt_seed, length=lengths[0])
    negative = kw.pop("negative", None) or tm.conditioning(variant, seed=2, length=lengths[1])
    return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", positive, negative, latent,
                               seed=seed, disable_pbar=True, **kw)
