"""The pack's ComfyUI nodes (V1 API: stable across ComfyUI versions)."""

from __future__ import annotations

from .cachedit_node import ApplyCacheDiT
from .calibration_node import CalibrateTeaCache, CalibrationReport
from .report_node import CacheReport
from .teacache_node import ApplyTeaCache

NODE_CLASS_MAPPINGS = {
    "DiTCache_ApplyTeaCache": ApplyTeaCache,
    "DiTCache_ApplyCacheDiT": ApplyCacheDiT,
    "DiTCache_CalibrateTeaCache": CalibrateTeaCache,
    "DiTCache_CalibrationReport": CalibrationReport,
    "DiTCache_CacheReport": CacheReport,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DiTCache_ApplyTeaCache": "Apply TeaCache",
    "DiTCache_ApplyCacheDiT": "Apply Cache-DiT (DBCache/TaylorSeer/SCM)",
    "DiTCache_CalibrateTeaCache": "Calibrate TeaCache",
    "DiTCache_CalibrationReport": "TeaCache calibration report",
    "DiTCache_CacheReport": "Cache report",
}
