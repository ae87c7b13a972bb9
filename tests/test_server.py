"""End to end: the real ComfyUI server loads the pack and runs Apply TeaCache workflows.

One server for the whole module (start-up is the slow part); every workflow is posted to
/prompt the way the browser UI does, and results are read back from SaveLatent's files
and from the server's own log.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import dit_cache
import pytest
import tiny_models
import torch
import workflows_api as wf
from comfy_server import ComfyServer, PromptRejected, PromptRun

NODE = "DiTCache_ApplyTeaCache"
TEST_NODES = {
    "DiTCacheTest_TinyModel", "DiTCacheTest_Conditioning", "DiTCacheTest_Latent", "DiTCacheTest_ImageToVideo",
    "DiTCacheTest_BlockPatch",
    "DiTCacheTest_TrainedModel", "DiTCacheTest_TrainedConditioning", "DiTCacheTest_TrainedLatent",
    "DiTCacheTest_LatentPicture",
}
CALIBRATION_NODES = ("DiTCache_CalibrateTeaCache", "DiTCache_CalibrationReport", "DiTCache_CacheReport")
STEPS = 6
IDENTITY = "1, 0"  # rescale(x) = x: the threshold reads directly as accumulated relative L1
TEACACHE_LINE = re.compile(
    r"TeaCache \[(?P<family>[^,\]]+), (?P<tag>[^\]]+)\]: computed (?P<computed>\d+)/(?P<total>\d+) steps"
)


@pytest.fixture(scope="module")
def server() -> Iterator[ComfyServer]:
    with ComfyServer() as running:
        yield running


def run_ok(server: ComfyServer, graph: dict[str, Any]) -> PromptRun:
    run = server.run(graph)
    assert run.status == "success", f"{run.error}\n{server.log_tail()}"
    return run


def latent_of(server: ComfyServer, run: PromptRun) -> torch.Tensor:
    return wf.saved_latent(run.history, server.output_dir)


def teacache_lines(log: str) -> list[re.Match[str]]:
    return list(TEACACHE_LINE.finditer(log))


def test_object_info_describes_apply_teacache(server: ComfyServer) -> None:
    info = server.object_info(NODE)
    assert info["display_name"] == "Apply TeaCache"
    assert info["category"] == "DiT Cache"
    assert "TeaCache" in info["description"]
    assert info["output"] == ["MODEL"]
    required, optional = info["input"]["required"], info["input"]["optional"]
    assert list(required) == ["model", "model_type", "rel_l1_thresh", "start_percent", "end_percent", "cache_device"]
    assert list(optional) == ["coefficients", "target_speedup"]
    assert required["model"][0] == "MODEL"
    assert required["model_type"][0] == "COMBO"  # the V3 schema's form of a list input
    model_types = required["model_type"][1]["options"]
    assert model_types[0] == "auto" and required["model_type"][1]["default"] == "auto"
    assert {"flux", "hunyuan_video", "wan2.1_t2v_14B", "wan2.2_ti2v_5B", "qwen_image", "z_image"} <= set(model_types)
    assert model_types == list(dit_cache.caching.teacache_presets.MODEL_TYPES)
    thresh_type, thresh = required["rel_l1_thresh"]
    assert thresh_type == "FLOAT" and (thresh["min"], thresh["max"], thresh["default"]) == (0.0, 10.0, 0.2)
    for name, default in (("start_percent", 0.0), ("end_percent", 1.0)):
        assert required[name][0] == "FLOAT"
        assert (required[name][1]["min"], required[name][1]["max"], required[name][1]["default"]) == (0.0, 1.0, default)
    assert required["cache_device"][1]["options"] == ["main_device", "cpu"]
    assert optional["coefficients"][0] == "STRING" and optional["coefficients"][1]["default"] == ""
    for name, (_, options) in {**required, **optional}.items():
        assert options.get("tooltip"), f"{name} has no tooltip"


def test_test_nodes_are_served_but_never_registered_by_the_pack(server: ComfyServer) -> None:
    assert set(dit_cache.NODE_CLASS_MAPPINGS) == {NODE, "DiTCache_ApplyCacheDiT", *CALIBRATION_NODES}
    info = server.all_object_info()
    assert {name for name in info if name.startswith("DiTCacheTest_")} == TEST_NODES
    assert {info[name]["python_module"] for name in TEST_NODES} == {"custom_nodes.dit_cache_test_nodes"}
    assert info[NODE]["python_module"] == "custom_nodes.comfyui-dit-cache"


def test_the_easycache_builder_sends_the_nodes_own_defaults(server: ComfyServer) -> None:
    inputs = server.object_info("EasyCache")["input"]["required"]
    assert inputs["start_percent"][1]["default"] == wf.EasyCache.start_percent
    assert inputs["end_percent"][1]["default"] == wf.EasyCache.end_percent


@pytest.mark.parametrize("variant", wf.FAMILY_VARIANTS)
def test_teacache_workflow_runs_per_family(server: ComfyServer, variant: str) -> None:
    shape = tiny_models.latent(variant)["samples"].shape
    plain = latent_of(server, run_ok(server, wf.graph(variant, steps=STEPS)))
    assert plain.shape == shape and torch.isfinite(plain).all()

    # Threshold 0: the patched path runs every step and changes nothing, bit for bit.
    exact = run_ok(server, wf.graph(variant, wf.TeaCache(rel_l1_thresh=0.0), steps=STEPS))
    assert torch.equal(latent_of(server, exact), plain)
    (line,) = teacache_lines(exact.log)
    assert line["family"] == wf.tiny_models.family(variant)
    assert (int(line["computed"]), int(line["total"])) == (STEPS, STEPS)

    skipping = run_ok(server, wf.graph(variant, wf.TeaCache(rel_l1_thresh=1.0, coefficients=IDENTITY), steps=STEPS))
    latent = latent_of(server, skipping)
    assert latent.shape == shape and torch.isfinite(latent).all()
    (line,) = teacache_lines(skipping.log)
    assert line["family"] == wf.tiny_models.family(variant) and line["tag"].startswith("TeaCache_R1.00")
    assert int(line["computed"]) < int(line["total"]) == STEPS
    assert not torch.equal(latent, plain)  # skipped steps replayed a cached residual


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ({"rel_l1_thresh": -1.0}, "rel_l1_thresh"),
        ({"start_percent": 0.9, "end_percent": 0.1}, "start_percent"),
        ({"coefficients": "1, two"}, "coefficients"),
        ({"cache_device": "gpu7"}, "cache_device"),
        ({"rel_l1_thresh": "abc"}, "rel_l1_thresh"),
    ],
)
def test_invalid_inputs_are_rejected_and_the_server_keeps_serving(
    server: ComfyServer, inputs: dict[str, Any], named: str
) -> None:
    with pytest.raises(PromptRejected) as rejected:
        server.post_prompt(wf.graph("flux", wf.TeaCache(**inputs), steps=2))
    assert rejected.value.status == 400
    body = rejected.value.body
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert list(body["node_errors"]) == [wf.METHOD]
    errors = body["node_errors"][wf.METHOD]["errors"]
    assert errors and all(named in f"{e['message']} {e['details']}" for e in errors), errors

    run_ok(server, wf.graph("flux", wf.TeaCache(rel_l1_thresh=0.0), steps=2))


def test_a_threshold_from_a_linked_node_is_accepted(server: ComfyServer) -> None:
    """validate_inputs sees None for a linked widget; its value only exists at run time."""
    graph = wf.graph("flux", wf.TeaCache(coefficients=IDENTITY), steps=STEPS)
    graph["threshold"] = {"class_type": "PrimitiveFloat", "inputs": {"value": 1.0}}
    graph[wf.METHOD]["inputs"]["rel_l1_thresh"] = ["threshold", 0]
    (line,) = teacache_lines(run_ok(server, graph).log)
    assert line["tag"].startswith("TeaCache_R1.00") and int(line["computed"]) < STEPS


def test_an_unsupported_model_passes_through_with_one_warning(server: ComfyServer) -> None:
    plain = latent_of(server, run_ok(server, wf.graph("lumina2", steps=STEPS)))
    run = run_ok(server, wf.graph("lumina2", wf.TeaCache(rel_l1_thresh=1.0, coefficients=IDENTITY), steps=STEPS))
    warnings = [line for line in run.log.splitlines() if "NextDiT" in line]
    assert len(warnings) == 1 and "not supported" in warnings[0], warnings
    assert not teacache_lines(run.log)
    assert torch.equal(latent_of(server, run), plain)


CACHEDIT_NODE = "DiTCache_ApplyCacheDiT"
CACHEDIT_LINE = re.compile(
    r"Cache-DiT \[(?P<family>[^,\]]+), (?P<tag>[^\]]+)\]: computed (?P<computed>\d+)/(?P<total>\d+) steps"
)


def test_object_info_describes_apply_cachedit(server: ComfyServer) -> None:
    info = server.object_info(CACHEDIT_NODE)
    assert info["display_name"] == "Apply Cache-DiT (DBCache/TaylorSeer/SCM)"
    required, optional = info["input"]["required"], info["input"]["optional"]
    assert {"Fn_compute_blocks", "Bn_compute_blocks", "residual_diff_threshold", "max_warmup_steps",
            "warmup_interval", "max_cached_steps", "max_continuous_cached_steps", "calibrator",
            "taylorseer_order", "calibrator_cache_type", "scm_preset", "scm_policy"} <= set(required)
    assert {"scm_compute_bins", "scm_cache_bins", "max_accumulated_residual_diff_threshold", "target_speedup",
            "calibration", "dmd_history", "dmd_rank", "dmd_svd_precision"} <= set(optional)
    defaults = {name: options.get("default") for name, (_, options) in required.items() if name != "model"}
    assert defaults["Fn_compute_blocks"] == 1 and defaults["Bn_compute_blocks"] == 0
    assert defaults["residual_diff_threshold"] == 0.24 and defaults["max_warmup_steps"] == 4
    assert defaults["max_continuous_cached_steps"] == 3 and defaults["calibrator"] == "none"
    for name, (_, options) in {**required, **optional}.items():
        assert options.get("tooltip"), f"{name} has no tooltip"


@pytest.mark.parametrize("variant", wf.FAMILY_VARIANTS)
def test_cachedit_workflow_runs_per_family(server: ComfyServer, variant: str) -> None:
    plain = latent_of(server, run_ok(server, wf.graph(variant, steps=STEPS)))
    exact = run_ok(server, wf.graph(variant, wf.CacheDiT({"residual_diff_threshold": 0.0}), steps=STEPS))
    assert torch.equal(latent_of(server, exact), plain)
    forced = wf.CacheDiT({"residual_diff_threshold": 1.0, "max_warmup_steps": 2, "calibrator": "taylorseer"})
    run = run_ok(server, wf.graph(variant, forced, steps=STEPS))
    (line,) = CACHEDIT_LINE.finditer(run.log)
    assert line["family"] == wf.tiny_models.family(variant) and int(line["computed"]) < int(line["total"]) == STEPS
    latent = latent_of(server, run)
    assert torch.isfinite(latent).all() and not torch.equal(latent, plain)


@pytest.mark.parametrize(
    ("settings", "named"),
    [({"residual_diff_threshold": -1.0}, "residual_diff_threshold"), ({"scm_preset": "custom"}, "scm"),
     ({"taylorseer_order": 9}, "taylorseer_order")],
)
def test_cachedit_invalid_inputs_are_rejected(server: ComfyServer, settings: dict[str, Any], named: str) -> None:
    with pytest.raises(PromptRejected) as rejected:
        server.post_prompt(wf.graph("flux", wf.CacheDiT(settings), steps=2))
    errors = rejected.value.body["node_errors"][wf.METHOD]["errors"]
    assert all(named in f"{e['message']} {e['details']}" for e in errors), errors


def test_an_api_prompt_from_before_the_calibrators_is_rejected_naming_the_new_inputs(server: ComfyServer) -> None:
    """enable_taylorseer / taylorseer_cache_type by name: ComfyUI ignores unknown inputs, so the prompt must fail
    on the missing new ones rather than run without the TaylorSeer it asked for."""
    graph = wf.graph("flux", wf.CacheDiT({"calibrator": "taylorseer"}), steps=2)
    inputs = graph[wf.METHOD]["inputs"]
    inputs["enable_taylorseer"] = inputs.pop("calibrator") == "taylorseer"
    inputs["taylorseer_cache_type"] = inputs.pop("calibrator_cache_type")
    with pytest.raises(PromptRejected) as rejected:
        server.post_prompt(graph)
    errors = rejected.value.body["node_errors"][wf.METHOD]["errors"]
    assert sorted(e["extra_info"]["input_name"] for e in errors) == ["calibrator", "calibrator_cache_type"], errors


def test_cachedit_too_many_compute_blocks_fails_the_node_with_the_models_limit(server: ComfyServer) -> None:
    run = server.run(wf.graph("flux", wf.CacheDiT({"Fn_compute_blocks": 4}), steps=2))
    assert run.status == "error" and "4 transformer blocks" in str(run.error)


def with_report(graph: dict[str, Any], report: str, model: Any) -> dict[str, Any]:
    """`graph` plus a report node after its sampler and a PreviewImage that shows the report."""
    graph["report"] = {"class_type": report, "inputs": {"model": model, "latent": [wf.SAMPLER, 0]}}
    graph["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["report", 0]}}
    return graph


def preview_size(server: ComfyServer, run: PromptRun) -> tuple[int, int]:
    from PIL import Image

    (image,) = run.history["outputs"]["preview"]["images"]
    with Image.open(server.base_dir / "temp" / image["subfolder"] / image["filename"]) as opened:
        return opened.size


def test_calibrate_then_pick_the_preset_and_a_target_speedup(server: ComfyServer) -> None:
    """Calibration writes a preset that Apply TeaCache lists on the next /object_info and uses for a target."""
    assert "user:e2e_wan" not in server.object_info(NODE)["input"]["required"]["model_type"][1]["options"]
    calibrate = wf.graph("wan21_t2v", steps=STEPS)
    calibrate[wf.METHOD] = {"class_type": "DiTCache_CalibrateTeaCache", "inputs": {
        "model": [wf.LOADER, 0], "preset_name": "e2e_wan", "model_type": "auto", "append": True}}
    calibrate[wf.SAMPLER]["inputs"]["model"] = [wf.METHOD, 0]
    plain = latent_of(server, run_ok(server, wf.graph("wan21_t2v", steps=STEPS)))
    run = run_ok(server, with_report(calibrate, "DiTCache_CalibrationReport", [wf.METHOD, 0]))
    assert torch.equal(latent_of(server, run), plain)  # calibration skips nothing
    assert "Calibrate TeaCache [wan]: preset e2e_wan from 1 run(s)" in run.log
    assert (server.base_dir / "user" / "dit_cache" / "teacache_presets" / "e2e_wan.json").is_file()
    assert preview_size(server, run)[0] == 800

    assert "user:e2e_wan" in server.object_info(NODE)["input"]["required"]["model_type"][1]["options"]
    assert "user:e2e_wan" in server.object_info(CACHEDIT_NODE)["input"]["optional"]["calibration"][1]["options"]
    targeted = wf.graph("wan21_t2v", wf.TeaCache(model_type="user:e2e_wan"), steps=STEPS)
    targeted[wf.METHOD]["inputs"]["target_speedup"] = 1.5
    run = run_ok(server, with_report(targeted, "DiTCache_CacheReport", [wf.METHOD, 0]))
    assert "Apply TeaCache: target 1.50x on 1 calibration run(s) of user:e2e_wan" in run.log
    (line,) = teacache_lines(run.log)
    assert int(line["computed"]) < STEPS and preview_size(server, run)[0] == 800


def test_a_missing_preset_is_rejected_naming_the_input(server: ComfyServer) -> None:
    with pytest.raises(PromptRejected) as rejected:
        server.post_prompt(wf.graph("flux", wf.TeaCache(model_type="user:absent"), steps=2))
    errors = rejected.value.body["node_errors"][wf.METHOD]["errors"]
    assert any("model_type 'user:absent'" in f"{e['message']} {e['details']}" for e in errors), errors
