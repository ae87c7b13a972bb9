"""The pack's ComfyUI nodes (V1 API: stable across ComfyUI versions)."""

from __future__ import annotations

from .cachedit_node import ApplyCacheDiT
from .teacache_node import ApplyTeaCache

NODE_CLASS_MAPPINGS = {
    "DiTCache_ApplyTeaCache": ApplyTeaCache,
    "DiTCache_ApplyCacheDiT": ApplyCacheDiT,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DiTCache_ApplyTeaCache": "Apply TeaCache",
    "DiTCache_ApplyCacheDiT": "Apply Cache-DiT (DBCache/TaylorSeer/SCM)",
}
