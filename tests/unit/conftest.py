"""The unit lane: the caching rules, presets, replay and calibration maths, with no ComfyUI.

`caching/` imports nothing of ComfyUI, so it is loaded here as `dit_cache.caching` without the
pack's `__init__` (which registers the nodes and so imports ComfyUI). `make test-unit` runs
this folder on its own, with `--confcutdir tests/unit` so that tests/conftest.py (which sets up
a host ComfyUI) stays out; every test then checks that nothing imported ComfyUI after all.
"""
from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # probes.py: test-side helpers of plain torch and numpy

ALONE = "dit_cache" not in sys.modules  # inside the host lane the whole pack is already imported
if ALONE:
    package = types.ModuleType("dit_cache")
    package.__path__ = [str(ROOT)]
    sys.modules["dit_cache"] = package


@pytest.fixture(autouse=True)
def _no_comfyui() -> Iterator[None]:
    yield
    if ALONE:
        assert "comfy" not in sys.modules, "a unit test imported ComfyUI: it belongs beside tests/conftest.py"
