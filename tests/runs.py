"""What a node left on a MODEL, for every test: the patch of a method and its latest run.

The transformer_options keys live on the patch classes (`TeaCachePatch.key`, ...); tests name a
method by its short name and never spell a key.
"""
from __future__ import annotations

from typing import Any

from dit_cache.caching.records import RunSummary
from dit_cache.model_patches.cachedit_patch import CacheDiTPatch
from dit_cache.model_patches.sampling_hooks import installed
from dit_cache.model_patches.teacache_patch import TeaCachePatch

PATCHES: dict[str, type] = {"teacache": TeaCachePatch, "cachedit": CacheDiTPatch}


def patch_of(model: Any, method: str) -> Any:
    """The `method` ("teacache" or "cachedit") patch on this MODEL; fails the test if there is none."""
    patch = installed(model, PATCHES[method])
    assert patch is not None, f"no {method} patch on this MODEL"
    return patch


def last_run(model: Any, method: str) -> RunSummary | None:
    return patch_of(model, method).last_run
