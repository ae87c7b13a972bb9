"""Import side effect for bench scripts: the real ComfyUI on sys.path (CPU unless a GPU is asked for), the
pack imported as package ``dit_cache`` and ``tests/`` importable, exactly as the test suite sets them up."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", ROOT / ".host" / "ComfyUI")).resolve()
if not (COMFYUI_PATH / "comfy").is_dir():
    raise RuntimeError(f"no ComfyUI at {COMFYUI_PATH}: run `make bench`, or set COMFYUI_PATH to a ComfyUI checkout")
sys.path.insert(0, str(COMFYUI_PATH))
sys.path.insert(0, str(ROOT / "tests"))

import comfy.cli_args

comfy.cli_args.args.cpu = os.environ.get("DIT_CACHE_BENCH_DEVICE", "cpu") == "cpu"

if "dit_cache" not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        "dit_cache", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules["dit_cache"] = pack
    spec.loader.exec_module(pack)
