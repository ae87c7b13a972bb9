"""Test set-up: the real ComfyUI on sys.path (CPU), and the pack imported as package `dit_cache`."""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMFYUI_PATH = Path(os.environ.get("COMFYUI_PATH", ROOT / ".host" / "ComfyUI")).resolve()
if not (COMFYUI_PATH / "comfy").is_dir():
    raise RuntimeError(f"no ComfyUI at {COMFYUI_PATH}: run `make test`, or set COMFYUI_PATH to a ComfyUI checkout")
sys.path.insert(0, str(COMFYUI_PATH))

import comfy.cli_args

comfy.cli_args.args.cpu = True
logging.getLogger().setLevel(logging.INFO)


def _import_pack() -> None:
    spec = importlib.util.spec_from_file_location("dit_cache", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dit_cache"] = module
    spec.loader.exec_module(module)


_import_pack()


class _TinyModels(dict):
    """Tiny models by variant name, each loaded on first use."""

    def __init__(self, cache: Path):
        super().__init__()
        self.cache = cache

    def __missing__(self, variant: str) -> Any:
        import tiny_models

        self[variant] = tiny_models.load_model(variant, self.cache)
        return self[variant]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny models, loaded once per session; the nodes patch clones, so tests share them."""
    return _TinyModels(tmp_path_factory.mktemp("tiny-models"))
