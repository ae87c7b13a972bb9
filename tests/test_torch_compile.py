"""ComfyUI's TorchCompileModel after our nodes: same images, no decision traced, bounded recompiles.

On this CPU-only suite the node's "cudagraphs" backend is used: without a GPU it skips the CUDA
graphs and runs the graphs Dynamo captured through AOTAutograd, which exercises exactly what
matters here (what Dynamo traces, guards and recompiles) without a C++ compiler per graph
("inductor" takes minutes on two cores). The bound on graphs is what ComfyUI's own compiled
model needs without us.
"""
from __future__ import annotations

from typing import Any

import comfy.sample
import pytest
import tiny_models as tm
import torch
import torch._dynamo
import torch._dynamo.utils
from comfy_extras.nodes_torch_compile import TorchCompileModel
from dit_cache.caching.dbcache import DBCacheBranch
from dit_cache.caching.teacache import TeaCacheRun
from runs import EAGER, METHODS, apply, last_run

STEPS = 20


def sample(model: Any, variant: str) -> torch.Tensor:
    latent = tm.latent(variant)["samples"]
    noise = comfy.sample.prepare_noise(latent, 0)
    return comfy.sample.sample(model, noise, STEPS, 1.0, "euler", "simple", tm.conditioning(variant, seed=1),
                               tm.conditioning(variant, seed=2), latent, seed=0, disable_pbar=True)


def compiled(model: Any) -> Any:
    return TorchCompileModel.execute(model, "cudagraphs")[0]


def graphs() -> int:
    """Distinct graphs Dynamo has compiled so far: one more per recompilation."""
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


# Flux: blocks reached through ComfyUI's replace patches; Z-Image: through our object patch on each layer.
@pytest.mark.parametrize("variant", ["flux", "z_image"])
def test_compiled_model_matches_and_recompiles_no_more_than_comfyuis_own(variant, monkeypatch) -> None:
    model = tm.load_model(variant)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    sample(compiled(model), variant)
    comfyui_alone = graphs()

    traced: list[bool] = []

    def spy_on(original: Any) -> Any:
        def spy(self: Any, *args: Any) -> Any:
            traced.append(torch.compiler.is_compiling())
            return original(self, *args)
        return spy

    for owner, name in ((TeaCacheRun, "decide"), (DBCacheBranch, "can_cache")):
        monkeypatch.setattr(owner, name, spy_on(getattr(owner, name)))

    patched = {method: apply(model, method, **EAGER[method]) for method in METHODS}
    for name, method in patched.items():
        expected = sample(method, variant)
        decisions = [r.computed for r in last_run(method, name).records]
        assert False in decisions
        for _ in range(2):  # a second run must not recompile: no guard depends on a run's state
            frames = torch._dynamo.utils.counters["frames"]["total"]
            result = sample(compiled(method), variant)
            assert torch._dynamo.utils.counters["frames"]["total"] > frames  # Dynamo really ran the model
            torch.testing.assert_close(result, expected, rtol=1e-4, atol=1e-4)
            records = last_run(method, name).records
            assert [r.computed for r in records] == decisions
    assert traced and not any(traced)  # every decision ran eagerly, none was traced into a graph
    assert graphs() <= comfyui_alone, f"{graphs()} graphs with the caches, {comfyui_alone} without"
