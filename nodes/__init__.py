"""The pack's ComfyUI nodes, on the V3 schema (comfy_api.latest, as ComfyUI's own nodes; in both test hosts)."""

from __future__ import annotations

from .cachedit_node import ApplyCacheDiT
from .calibration_node import CalibrateTeaCache, CalibrationReport
from .report_node import CacheReport
from .teacache_node import ApplyTeaCache

_NODES = (ApplyTeaCache, ApplyCacheDiT, CalibrateTeaCache, CalibrationReport, CacheReport)
_SCHEMAS = {node: node.define_schema() for node in _NODES}

NODE_CLASS_MAPPINGS = {schema.node_id: node for node, schema in _SCHEMAS.items()}
NODE_DISPLAY_NAME_MAPPINGS = {schema.node_id: schema.display_name for schema in _SCHEMAS.values()}
