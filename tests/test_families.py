"""A model family is one module: dropped into model_patches/families/, it is found, named and cached.

The test copies the pack as the registry ships it, adds one module (Lumina 2: ComfyUI's NextDiT
under its Lumina2 config, the glue Z-Image's), imports that copy as a package of its own, and
uses its nodes on a tiny Lumina 2 — which the shipped pack passes through.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import dit_cache
import pytest
import tiny_models as tm
import torch
from comfy_server import copy_pack
from runs import EAGER, OFF, sample

LUMINA2 = '''"""Lumina 2: ComfyUI's NextDiT under its Lumina2 config, with Z-Image's glue."""
import dataclasses

from .z_image import FAMILY as Z_IMAGE

FAMILY = dataclasses.replace(Z_IMAGE, name="lumina2", label="Lumina 2", configs=frozenset({"Lumina2"}))
'''


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The pack with one more module in model_patches/families/, imported as `dit_cache_extended`."""
    root = tmp_path_factory.mktemp("extended") / "pack"
    copy_pack(root)
    (root / "model_patches" / "families" / "lumina2.py").write_text(LUMINA2, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(
        "dit_cache_extended", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    return pack



def _extended(name: str) -> ModuleType:
    return sys.modules[f"dit_cache_extended.{name}"]


def test_one_module_adds_a_family_that_both_nodes_run_exactly(extended: ModuleType) -> None:
    registry = _extended("model_patches.registry")
    shipped = dit_cache.model_patches.registry
    model = tm.load_model("lumina2")
    assert shipped.detect(model) is None  # the shipped pack passes Lumina 2 through
    assert registry.detect(model).name == "lumina2"
    assert len(registry.families()) == len(shipped.families()) + 1
    nodes = extended.NODE_CLASS_MAPPINGS
    assert "Lumina 2" in nodes["DiTCache_ApplyTeaCache"].DESCRIPTION
    assert "Lumina 2" in nodes["DiTCache_ApplyCacheDiT"].DESCRIPTION

    expected = sample(model, "lumina2")
    off = nodes["DiTCache_ApplyTeaCache"].execute(model, **OFF["teacache"])[0]
    assert torch.equal(sample(off, "lumina2"), expected)
    teacache = nodes["DiTCache_ApplyTeaCache"].execute(model, **EAGER["teacache"])[0]
    cachedit = nodes["DiTCache_ApplyCacheDiT"].execute(model, **EAGER["cachedit"])[0]
    for patched, patch_type in ((teacache, _extended("model_patches.teacache_patch").TeaCachePatch),
                                (cachedit, _extended("model_patches.cachedit_patch").CacheDiTPatch)):
        result = sample(patched, "lumina2")
        patch = _extended("model_patches.sampling_hooks").installed(patched, patch_type)
        assert patch.family.name == "lumina2"
        assert patch.last_run.disabled is None and patch.last_run.skipped_steps
        assert torch.isfinite(result).all() and not torch.equal(result, expected)


def test_the_shipped_families_are_found_one_module_each() -> None:
    families_dir = Path(dit_cache.model_patches.registry.__file__).parent / "families"
    modules = sorted(p.stem for p in families_dir.glob("*.py") if p.stem != "__init__")
    assert [f.name for f in dit_cache.model_patches.registry.families()] == modules
    assert dit_cache.model_patches.registry.supported() == "Flux, HunyuanVideo, Qwen-Image, Wan 2.1/2.2, Z-Image"
    assert dit_cache.model_patches.registry.cfg_shared() == "Flux and Qwen-Image"
