"""The example workflows in workflows/, in the real graph editor and the real server.

One ComfyUI server with its real frontend (comfyui-frontend-package) and one headless Chromium
for the module. Each workflow is opened the way the template browser opens it; the test reads
what the editor made of it (nodes, our widgets and their values, the tooltips it shows under
the mouse), converts it to an API prompt with the editor's own graphToPrompt, swaps the model
files for the tiny test models and runs it on the server to `success`, checking in the log that
our node(s) ran with the settings the editor showed.
"""
from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import comfyui_version
import pytest
import tiny_prompt
from comfy_server import PACK_DIR_NAME, ROOT, ComfyServer, PromptRun, import_tiny_models
from editor import OUR_PREFIX, Editor, open_editor

sys.path.insert(0, str(ROOT / "tools"))
import make_workflows

WORKFLOWS = ROOT / "workflows"
tiny_models = import_tiny_models()
HOST_VERSION = tuple(int(part) for part in comfyui_version.__version__.split(".")[:2])
NAMES = sorted(path.stem for path in WORKFLOWS.glob("*.json"))
TEACACHE, CACHEDIT = "DiTCache_ApplyTeaCache", "DiTCache_ApplyCacheDiT"
SAMPLERS = set(make_workflows.SAMPLER_MODEL_INPUTS)
SUMMARY = re.compile(
    r"(?P<method>TeaCache|Cache-DiT) \[(?P<family>[^,\]]+), (?P<tag>[^\]]+)\]: computed (?P<computed>\d+)/(?P<steps>\d+) steps"
    r".*\((?P<member>[^()]*)\)$",
    re.MULTILINE,
)
CFG_OFF = re.compile(r"TeaCache: CFG is active \(cfg=2\.5\).*TeaCache is off for this run")


@dataclass(frozen=True)
class Expected:
    """How a workflow runs on tiny models: the tiny variant, the family our node detects, log lines."""

    variant: str
    family: str
    cfg_off: bool = False  # TeaCache on Flux / Qwen-Image at cfg > 1: switched off, one line says so


EXPECTED = {
    "flux_dev_teacache": Expected("flux", "flux"),
    "flux_dev_cachedit": Expected("flux", "flux"),
    "qwen_image_cachedit": Expected("qwen_image", "qwen_image"),
    "qwen_image_teacache_cfg": Expected("qwen_image", "qwen_image", cfg_off=True),
    "z_image_turbo_cachedit": Expected("z_image", "z_image"),
    "wan21_t2v_teacache": Expected("wan21_t2v", "wan"),
    "wan22_14b_i2v_teacache": Expected("wan22_high", "wan"),  # the low-noise expert: tiny_prompt.expert_variant
    "wan22_5b_ti2v_cachedit": Expected("wan22_5b", "wan"),
    "hunyuan_video_teacache": Expected("hunyuan_video", "hunyuan_video"),
    "flux2_dev_teacache": Expected("flux2_dev", "flux"),
    "flux2_klein_cachedit": Expected("flux2", "flux"),  # the Klein 4B base (the distilled subgraph is bypassed)
    "qwen_image_edit_2511_cachedit": Expected("qwen_image_edit_2511", "qwen_image"),
    "z_image_teacache": Expected("z_image", "z_image"),
    "z_image_turbo_fun_controlnet_cachedit": Expected("z_image", "z_image"),
    "hunyuan_video15_teacache": Expected("hunyuan_video_15", "hunyuan_video"),
    "wan22_14b_fun_control_teacache": Expected("wan21_fun_control", "wan"),  # both experts: one tiny Fun Control
}
EXAMPLES = {example.name: example for example in make_workflows.EXAMPLES}


@pytest.fixture(scope="module")
def server() -> Iterator[ComfyServer]:
    with ComfyServer(frontend=True) as running:
        yield running


@pytest.fixture(scope="module")
def editor(server: ComfyServer) -> Iterator[Editor]:
    with open_editor(server) as opened:
        yield opened


@pytest.fixture(scope="module")
def object_info(server: ComfyServer) -> dict[str, Any]:
    return server.all_object_info()


def skip_unless_the_host_runs(name: str) -> None:
    needs = EXAMPLES[name].needs_033
    if needs and HOST_VERSION < (0, 33):
        pytest.skip(f"{name} needs ComfyUI 0.33: {needs}")


def saved(name: str) -> dict[str, Any]:
    return json.loads((WORKFLOWS / f"{name}.json").read_text(encoding="utf-8"))


def widget_defaults(info: dict[str, Any]) -> dict[str, Any]:
    """The node's widget inputs (not sockets) in the editor's order, with their defaults."""
    widgets = {}
    for section in ("required", "optional"):
        for name in info["input_order"].get(section, []):
            kind, *rest = info["input"][section][name]
            options = rest[0] if rest else {}
            if isinstance(kind, list):
                widgets[name] = options.get("default", kind[0])
            elif kind in {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}:
                widgets[name] = options.get("default", (options.get("options") or [None])[0])
    return widgets


def all_inputs(info: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec[1] if len(spec) > 1 else {} for section in info["input"].values() for name, spec in section.items()}


def test_the_template_browser_lists_every_example(editor: Editor) -> None:
    assert sorted(editor.templates()[PACK_DIR_NAME]) == NAMES == sorted(EXPECTED)


@pytest.mark.parametrize("example", make_workflows.EXAMPLES, ids=lambda e: e.name)
def test_the_committed_workflows_are_what_the_generator_builds(example: make_workflows.Example) -> None:
    """A node that gained inputs, or an edited note, needs `make workflows` (tools/make_workflows.py)."""
    path = WORKFLOWS / f"{example.name}.json"
    stale = path.read_text(encoding="utf-8") != make_workflows.render(make_workflows.build(example))
    assert not stale, f"{path.name} is stale: run `make workflows` (tools/make_workflows.py) and commit the result"


def overlaps(workflow: dict[str, Any]) -> set[tuple[int, int]]:
    """Pairs of node ids whose boxes (title bar included) overlap on the canvas."""
    boxes = [(n["id"], n["pos"][0], n["pos"][1] - 30, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in workflow["nodes"]]
    return {
        (a[0], b[0]) for i, a in enumerate(boxes) for b in boxes[i + 1:]
        if a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
    }


@pytest.mark.parametrize("name", NAMES)
def test_our_nodes_and_the_note_overlap_nothing_the_template_did_not(name: str) -> None:
    """On the workflow's canvas and on each subgraph's."""
    workflow, template = saved(name), make_workflows.load_template(EXAMPLES[name].package, EXAMPLES[name].template)
    assert [overlaps(graph) for graph in make_workflows.graphs(workflow)] == [
        overlaps(graph) for graph in make_workflows.graphs(template)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_example_opens_in_the_editor_and_runs(
    server: ComfyServer, editor: Editor, object_info: dict[str, Any], name: str
) -> None:
    skip_unless_the_host_runs(name)
    loaded = editor.load(name)
    assert (loaded.missing, loaded.dialogs, loaded.error_toasts, loaded.page_errors) == ([], [], [], [])
    for node in loaded.ours:
        node["id"] = int(node["id"])  # frontend 1.49 reports node ids as strings
    file_nodes = {node["id"]: node for graph in make_workflows.graphs(saved(name)) for node in graph["nodes"]}
    assert sorted(node["id"] for node in loaded.ours) == sorted(
        node_id for node_id, node in file_nodes.items() if node["type"].startswith(OUR_PREFIX)
    )
    assert loaded.ours, f"{name} has none of our nodes"

    # Drawn: every widget input of the node, with the file's value (inputs newer than the file: defaults).
    for node in loaded.ours:
        defaults = widget_defaults(object_info[node["type"]])
        assert [w["name"] for w in node["widgets"]] == list(defaults)
        values = file_nodes[node["id"]]["widgets_values"]
        assert [w["value"] for w in node["widgets"]] == values + list(defaults.values())[len(values):]
        assert node["inputs"][0]["name"] == "model" and node["inputs"][0]["link"] is not None

    # Converted by the editor: each active node of ours takes the MODEL chain and feeds only a sampler.
    prompt = editor.api_prompt()
    active = [node for node in loaded.ours if node["active"]]
    for node in active:
        entry = prompt[node["path"]]
        assert entry["class_type"] == node["type"]
        assert {k: v for k, v in entry["inputs"].items() if k != "model"} == {w["name"]: w["value"] for w in node["widgets"]}
        consumers = [
            other["class_type"] for other in prompt.values() if [node["path"], 0] in other["inputs"].values()
        ]
        assert consumers and set(consumers) <= SAMPLERS, consumers

    run_on_tiny_models(server, prompt, name, active)


def run_on_tiny_models(
    server: ComfyServer, prompt: dict[str, Any], name: str, active: list[dict[str, Any]]
) -> PromptRun:
    """Run the editor's prompt on the tiny models; each active node of ours logs its run with the drawn threshold."""
    expected = EXPECTED[name]
    graph = tiny_prompt.tiny(prompt, expected.variant, prefix=f"examples/{name}")
    tiny_prompt.write_loras(graph, server.base_dir / "models" / "loras")
    run = server.run(graph)
    assert run.status == "success", f"{run.error}\n{server.log_tail()}"
    summaries = list(SUMMARY.finditer(run.log))
    if expected.cfg_off:
        assert len(CFG_OFF.findall(run.log)) == 1 and not summaries, run.log
        return run
    member, _ = tiny_models.named(expected.variant)  # wan22_high and wan22_low share theirs
    assert sorted((m["method"], m["family"], m["member"]) for m in summaries) == sorted(
        ("TeaCache" if node["type"] == TEACACHE else "Cache-DiT", expected.family, member) for node in active
    ), run.log
    for node in active:
        threshold = next(w["value"] for w in node["widgets"] if w["name"] in ("rel_l1_thresh", "residual_diff_threshold"))
        tag = f"_R{threshold:.2f}" if node["type"] == TEACACHE else f"_R{float(threshold)}"
        assert any(tag in m["tag"] for m in summaries), (tag, [m["tag"] for m in summaries])
    return run


def test_the_controlnet_example_never_replays_the_controlnet(server: ComfyServer, editor: Editor, object_info: dict[str, Any]) -> None:
    """Z-Image Turbo's Fun ControlNet acts at every block and step: with it every step computes, even at the
    highest threshold; the same graph without it caches (so that run could have cached)."""
    name = "z_image_turbo_fun_controlnet_cachedit"
    skip_unless_the_host_runs(name)
    editor.load(name)
    graph = tiny_prompt.tiny(editor.api_prompt(), EXPECTED[name].variant, prefix=f"examples/{name}")
    highest = all_inputs(object_info[CACHEDIT])["residual_diff_threshold"]["max"]
    for entry in graph.values():
        if entry["class_type"] == CACHEDIT:
            entry["inputs"]["residual_diff_threshold"] = highest
    (patch_id,) = (node_id for node_id, entry in graph.items() if entry["class_type"] == "DiTCacheTest_BlockPatch")
    without = {node_id: json.loads(json.dumps(entry)) for node_id, entry in graph.items() if node_id != patch_id}
    for entry in without.values():  # the ControlNet's consumers take the model it patched
        entry["inputs"] = {k: graph[patch_id]["inputs"]["model"] if v == [patch_id, 0] else v for k, v in entry["inputs"].items()}
    counts = []
    for prompt in (graph, without):
        run = server.run(prompt)
        assert run.status == "success", f"{run.error}\n{server.log_tail()}"
        (summary,) = SUMMARY.finditer(run.log)
        counts.append((int(summary["computed"]), int(summary["steps"])))
    (with_control, steps), (without_control, _) = counts
    assert with_control == steps == 8 and without_control < steps, counts


def test_wan22_bypassed_20_step_group_runs_when_enabled(server: ComfyServer, editor: Editor) -> None:
    """The Wan 2.2 14B example's bypassed fp8 group (20 steps, 10 per expert) has its own pair of our nodes."""
    name = "wan22_14b_i2v_teacache"
    bypassed = [node for node in editor.load(name).ours if node["mode"] == 4]
    assert len(bypassed) == 2
    editor.swap_bypassed()
    prompt = editor.api_prompt()
    samplers = [entry for entry in prompt.values() if entry["class_type"] == "KSamplerAdvanced"]
    assert [entry["inputs"]["steps"] for entry in samplers] == [20, 20]
    assert {node["path"] for node in bypassed} <= set(prompt)
    run_on_tiny_models(server, prompt, name, bypassed)


@pytest.mark.parametrize("node_type", [TEACACHE, CACHEDIT])
def test_every_input_shows_its_tooltip_under_the_mouse(
    editor: Editor, object_info: dict[str, Any], node_type: str
) -> None:
    name = next(name for name in NAMES if any(n["type"] == node_type for n in saved(name)["nodes"]))
    (node_id, *_) = (node["id"] for node in editor.load(name).ours if node["type"] == node_type)
    shown = editor.tooltips(node_id)
    info = object_info[node_type]
    assert info["description"] and shown[""] == info["description"]
    tooltips = {name: options.get("tooltip") for name, options in all_inputs(info).items()}
    assert all(tooltips.values()), tooltips
    assert shown == {"": info["description"], **tooltips}


def test_a_workflow_saved_before_the_calibrators_keeps_its_taylorseer(server: ComfyServer, editor: Editor) -> None:
    """A file from before `calibrator` replaced `enable_taylorseer` (on) in the same place: it opens without an
    error, the editor keeps the saved `true` there (picking from the list replaces it), and the run uses TaylorSeer."""
    workflow = saved("flux_dev_cachedit")
    node = next(n for n in workflow["nodes"] if n["type"] == CACHEDIT)
    values = node["widgets_values"]
    added = ("dmd_history", "dmd_rank", "dmd_svd_precision")  # inputs the calibrators brought, last in the list
    node["widgets_values"] = [*values[:7], True, *values[8 : -len(added)]]  # enable_taylorseer on, in its place
    path = server.base_dir / "user" / "default" / "workflows" / "before-calibrators.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(workflow), encoding="utf-8")
    loaded = editor.load_user_workflow(path.name)
    assert (loaded.missing, loaded.dialogs, loaded.error_toasts, loaded.page_errors) == ([], [], [], [])
    (ours,) = loaded.ours
    assert next(w["value"] for w in ours["widgets"] if w["name"] == "calibrator") is True
    prompt = editor.api_prompt()
    assert prompt[ours["path"]]["inputs"]["calibrator"] is True
    run = run_on_tiny_models(server, prompt, "flux_dev_cachedit", [ours])
    assert "_T1O1]" in run.log, run.log  # cache-dit's tag of TaylorSeer order 1
