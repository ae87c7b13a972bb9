"""Against the real server: every input of both nodes fuzzed through /prompt, and one patched MODEL
shared by two samplers (a hi-res second pass at another resolution) in one graph."""
from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import pytest
import safetensors.torch
import torch
import workflows_api as wf
from comfy_server import ComfyServer, PromptRejected

NODES = {"teacache": "DiTCache_ApplyTeaCache", "cachedit": "DiTCache_ApplyCacheDiT"}
LOG_LINE = {
    "teacache": re.compile(r"TeaCache \[flux, [^\]]+\]: computed (\d+)/(\d+) steps"),
    "cachedit": re.compile(r"Cache-DiT \[flux, [^\]]+\]: computed (\d+)/(\d+) steps"),
}
NAN = math.nan


@pytest.fixture(scope="module")
def server() -> Iterator[ComfyServer]:
    with ComfyServer() as running:
        yield running


def bad_values(options: list[Any] | str, config: dict[str, Any]) -> list[Any]:
    """Out of range, wrong type, empty, NaN, for one input of the given ComfyUI type."""
    if isinstance(options, list):  # a combo
        return ["no-such-choice", 3, ""]
    if options in ("INT", "FLOAT"):
        values = [config["min"] - 1, config["max"] + 1, "abc", "", NAN]
        return values + ([None] if options == "FLOAT" else [])
    return []  # BOOLEAN: ComfyUI coerces any value with bool(); STRING: see the bins and coefficients cases


def fuzz_cases(server: ComfyServer) -> Iterator[tuple[str, str, Any]]:
    for method, node in NODES.items():
        inputs = server.object_info(node)["input"]
        for name, spec in {**inputs["required"], **inputs.get("optional", {})}.items():
            if name != "model":
                for value in bad_values(spec[0], spec[1] if len(spec) > 1 else {}):
                    yield method, name, value
    for value in ("1, two", "nan, 1", "inf", "1e999"):
        yield "teacache", "coefficients", value
    for value in ("6, x", "", "0, 2", "2.5"):
        yield "cachedit", "scm_compute_bins", value


def method_node(method: str, **inputs: Any) -> wf.TeaCache | wf.CacheDiT:
    if method == "teacache":
        return wf.TeaCache(**inputs)
    if "scm_compute_bins" in inputs:  # bins are read only with the custom preset
        inputs |= {"scm_preset": "custom", "scm_cache_bins": "1, 3"}
    return wf.CacheDiT(inputs)


def test_fuzzed_inputs_are_rejected_by_name_and_the_server_keeps_serving(server: ComfyServer) -> None:
    cases = list(fuzz_cases(server))
    assert len(cases) > 80 and {m for m, _, _ in cases} == set(NODES)
    accepted = []
    for method, name, value in cases:
        try:
            server.post_prompt(wf.graph("flux", method_node(method, **{name: value}), steps=2))
        except PromptRejected as rejected:
            assert rejected.status == 400
            errors = rejected.body["node_errors"][wf.METHOD]["errors"]
            assert errors and all(name in f"{e['message']} {e['details']}" for e in errors), (name, value, errors)
            continue
        accepted.append((method, name, value))
    assert not accepted, accepted
    assert server._request("GET", "/queue") == {"queue_running": [], "queue_pending": []}
    assert not [p for p in server.output_dir.rglob("*") if p.is_file()]  # nothing ran, nothing written
    run = server.run(wf.graph("flux", wf.TeaCache(rel_l1_thresh=0.0), steps=2))
    assert run.status == "success"


def two_pass_graph(method: wf.TeaCache | wf.CacheDiT | None, steps: int) -> dict[str, Any]:
    """One MODEL into two KSamplers: the second upscales the first's latent and refines it (denoise 0.5)."""
    graph = wf.graph("flux", method, steps=steps)
    model = [wf.METHOD, 0] if method is not None else [wf.LOADER, 0]
    graph["upscale"] = {"class_type": "LatentUpscale", "inputs": {
        "samples": [wf.SAMPLER, 0], "upscale_method": "bilinear", "width": 192, "height": 192, "crop": "disabled"}}
    graph["hires"] = {"class_type": "KSampler", "inputs": {
        **graph[wf.SAMPLER]["inputs"], "model": model, "latent_image": ["upscale", 0], "denoise": 0.5}}
    graph["save_hires"] = {"class_type": "SaveLatent", "inputs": {
        "samples": ["hires", 0], "filename_prefix": graph[wf.SAVE]["inputs"]["filename_prefix"] + "_hires"}}
    return graph


def saved(server: ComfyServer, run: Any, node: str) -> torch.Tensor:
    (entry,) = run.history["outputs"][node]["latents"]
    return safetensors.torch.load_file(str(server.output_dir / entry["subfolder"] / entry["filename"]))["latent_tensor"]


@pytest.mark.parametrize("method", list(NODES))
def test_two_samplers_share_one_patched_model_in_one_graph(server: ComfyServer, method: str) -> None:
    steps = 6
    plain = server.run(two_pass_graph(None, steps))
    off = {"teacache": {"rel_l1_thresh": 0.0}, "cachedit": {"residual_diff_threshold": 0.0}}[method]
    exact = server.run(two_pass_graph(method_node(method, **off), steps))
    assert plain.status == exact.status == "success", exact.error
    for node in (wf.SAVE, "save_hires"):
        assert torch.equal(saved(server, exact, node), saved(server, plain, node))
    assert saved(server, exact, "save_hires").shape[-1] == 24

    on = {"teacache": {"rel_l1_thresh": 1.0, "coefficients": "1, 0"},
          "cachedit": {"residual_diff_threshold": 1.0, "max_warmup_steps": 2}}[method]
    run = server.run(two_pass_graph(method_node(method, **on), steps))
    assert run.status == "success", run.error
    lines = [(int(c), int(t)) for c, t in LOG_LINE[method].findall(run.log)]
    assert len(lines) == 2 and all(computed < total == steps for computed, total in lines), lines
    assert all(torch.isfinite(saved(server, run, node)).all() for node in (wf.SAVE, "save_hires"))
