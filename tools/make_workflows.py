"""Build workflows/*.json from ComfyUI's official templates: our node on the sampler's MODEL link, plus a note.

Each example starts from the template of ComfyUI's template packages for that model (their wiring
and the model file names users download; the releases pinned in tools/template-sources.txt, which
`make` puts in .host/templates, so every host builds the same files) and changes only this: one
Apply TeaCache / Apply Cache-DiT node is inserted on every link that brings the MODEL into a sampler
or guider (after LoRA and ModelSampling nodes; inside the subgraph where the template packs its
sampler into one), that column moves right to make room, another cache the template carries is taken
out (ours steps aside from it), and a note with the recommended settings is added. Run it again after
a node gains inputs:

    .venv/bin/python tools/make_workflows.py            # writes workflows/*.json
    .venv/bin/python tools/make_workflows.py --check    # exit 1 if a committed file is stale
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: F401  (the tests' set-up: the host ComfyUI on sys.path, the pack as `dit_cache`)
import dit_cache

TEACACHE, CACHEDIT = "DiTCache_ApplyTeaCache", "DiTCache_ApplyCacheDiT"
SAMPLER_MODEL_INPUTS = {
    "KSampler": "model", "KSamplerAdvanced": "model", "BasicGuider": "model", "CFGGuider": "model",
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MIN_WIDTH, COLUMN_GAP, WIDGET_HEIGHT, TITLE_HEIGHT = 340, 40, 24, 30
NOTE_SIZE = (520, 300)

Graph = dict[str, Any]  # the workflow itself or one of its subgraphs: nodes, links, groups


@dataclass(frozen=True)
class Example:
    """One example workflow: which template, which of our nodes, its settings per sampler, and the note."""

    name: str
    package: str  # the templates package, e.g. comfyui_workflow_templates_media_image
    template: str
    node: str
    note: str
    settings: dict[str, Any] = field(default_factory=dict)  # widget values that differ from the node's defaults
    per_sampler: dict[int, dict[str, Any]] = field(default_factory=dict)  # sampler node id -> own settings
    titles: dict[int, str] = field(default_factory=dict)  # sampler node id -> our node's title
    replaces: str = ""  # the node type of another cache in the template: taken out, its links joined
    drops: tuple[int, ...] = ()  # template notes about what `replaces` took out
    needs_033: str = ""  # why the example needs ComfyUI 0.33 (its nodes, its editor); empty: it runs on 0.3.75 too


def widget_inputs(node_type: str) -> list[tuple[str, Any]]:
    """(name, default) of the node's widget inputs, in the order the frontend stores widgets_values."""
    spec = dit_cache.NODE_CLASS_MAPPINGS[node_type].INPUT_TYPES()
    widgets = []
    for name, (kind, *rest) in [*spec["required"].items(), *spec.get("optional", {}).items()]:
        options = rest[0] if rest else {}
        if isinstance(kind, list):
            widgets.append((name, options.get("default", kind[0])))
        elif kind in WIDGET_TYPES:
            widgets.append((name, options["default"]))
    return widgets


SOURCE_TEMPLATES = ROOT / ".host" / "templates"


def load_template(package: str, template: str) -> dict[str, Any]:
    path = SOURCE_TEMPLATES / package / "templates" / template
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the pinned template packages are missing; `make workflows` installs them")
    return json.loads(path.read_text(encoding="utf-8"))


def graphs(workflow: dict[str, Any]) -> list[Graph]:
    """The workflow's own graph, then each subgraph it defines (their nodes are drawn on their own canvas)."""
    return [workflow, *workflow.get("definitions", {}).get("subgraphs", [])]


def _new_id(workflow: dict[str, Any], kind: str) -> int:
    """A node or link id unused in the whole workflow: the editor keeps one counter for all its graphs."""
    root_key, state_key = f"last_{kind}_id", f"last{kind.title()}Id"
    states = [graph["state"] for graph in graphs(workflow)[1:]]
    new = max([workflow[root_key], *(state[state_key] for state in states)]) + 1
    workflow[root_key] = new
    for state in states:
        state[state_key] = new
    return new


class Links:
    """One graph's links by id; the workflow stores lists [id, from, slot, to, slot, type], subgraphs objects."""

    FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")

    def __init__(self, graph: Graph):
        self.graph = graph
        self.as_lists = "state" not in graph

    def get(self, link_id: int) -> dict[str, Any]:
        for link in self.graph["links"]:
            entry = dict(zip(self.FIELDS, link)) if self.as_lists else link
            if entry["id"] == link_id:
                return entry
        raise KeyError(link_id)

    def set(self, link_id: int, **changes: Any) -> None:
        for index, link in enumerate(self.graph["links"]):
            if (link[0] if self.as_lists else link["id"]) == link_id:
                if self.as_lists:
                    for name, value in changes.items():
                        link[self.FIELDS.index(name)] = value
                else:
                    link.update(changes)
                return
        raise KeyError(link_id)

    def add(self, *values: Any) -> None:
        self.graph["links"].append(list(values) if self.as_lists else dict(zip(self.FIELDS, values)))

    def remove(self, link_id: int) -> None:
        self.graph["links"] = [
            link for link in self.graph["links"] if (link[0] if self.as_lists else link["id"]) != link_id
        ]


def _node(graph: Graph, node_id: int) -> dict[str, Any]:
    return next(node for node in graph["nodes"] if node["id"] == node_id)


def _shift_right_of(graph: Graph, new: tuple[float, float, float, float], width: float) -> None:
    """Make room for a new node at `new` (x0, y0, x1, y1): nodes in its rows from x0 on move right by `width`.

    So do nodes it would cover and nodes a moved one would land on; nodes above or below stay (e.g. the
    ModelSampling node feeding it). Groups in its rows across x0 widen.
    """
    x0, rows = new[0], (new[1], new[3])
    right = [node for node in graph["nodes"] if node["pos"][0] >= x0 - 1 or _overlap(_box(node), new)]
    moving = [node for node in right if _overlap(_box(node), (x0 - 1, rows[0], float("inf"), rows[1]))]
    while moving:
        for node in moving:
            node["pos"][0] += width
        moved = [_box(node) for node in moving]
        right = [node for node in right if node not in moving]
        moving = [node for node in right if any(_overlap(_box(node), box) for box in moved)]
    for group in graph.get("groups", []):
        x, y, w, h = group["bounding"]
        if y < rows[1] and y + h > rows[0]:
            if x >= x0 - 1:
                group["bounding"][0] += width
            elif x0 < x + w:
                group["bounding"][2] += width
    slots = [graph[key]["bounding"] for key in ("inputNode", "outputNode") if key in graph]  # a subgraph's ends
    for box in slots:
        x, y, _, h = box
        if x >= x0 - 1 and y < rows[1] and y + h > rows[0]:
            box[0] += width


def _box(node: dict[str, Any]) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of a node on the canvas, its title bar included."""
    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _model_slot(node: dict[str, Any]) -> int | None:
    """The index of a sampler's linked MODEL input; None for other nodes and unlinked samplers."""
    for slot, entry in enumerate(node.get("inputs", [])):
        if entry["name"] == SAMPLER_MODEL_INPUTS.get(node["type"]) and entry.get("link") is not None:
            return slot
    return None


def _take_out(graph: Graph, node: dict[str, Any]) -> None:
    """Remove a pass-through MODEL node (another cache), its consumers fed from what fed it."""
    links = Links(graph)
    source_link = links.get(node["inputs"][0]["link"])
    source = _node(graph, source_link["origin_id"])
    feeds = source["outputs"][source_link["origin_slot"]]["links"]
    feeds.remove(source_link["id"])
    links.remove(source_link["id"])
    for link_id in node["outputs"][0]["links"] or []:
        links.set(link_id, origin_id=source["id"], origin_slot=source_link["origin_slot"])
        feeds.append(link_id)
    graph["nodes"].remove(node)


def _insert(
    workflow: dict[str, Any], graph: Graph, sampler: dict[str, Any], node_type: str, values: list[Any], title: str
) -> None:
    """Put a new `node_type` node on the link into `sampler`'s MODEL input, in a new column left of it."""
    links = Links(graph)
    slot = _model_slot(sampler)
    link_id = sampler["inputs"][slot]["link"]
    node_id, new_link = _new_id(workflow, "node"), _new_id(workflow, "link")
    x, y = sampler["pos"]
    size = [max(MIN_WIDTH, 9 * len(title) + 60), 50 + WIDGET_HEIGHT * len(values)]  # the whole title shows
    _shift_right_of(graph, (x, y - TITLE_HEIGHT, x + size[0], y + size[1]), size[0] + COLUMN_GAP)
    links.set(link_id, target_id=node_id, target_slot=0)  # source -> our node
    links.add(new_link, node_id, 0, sampler["id"], slot, "MODEL")  # our node -> sampler
    sampler["inputs"][slot]["link"] = new_link
    graph["nodes"].append({
        "id": node_id, "type": node_type, "pos": [x, y], "size": size,
        "flags": {}, "order": 0, "mode": sampler["mode"], "title": title,
        "inputs": [{"name": "model", "type": "MODEL", "link": link_id}],
        "outputs": [{"name": "MODEL", "type": "MODEL", "slot_index": 0, "links": [new_link]}],
        "properties": {"cnr_id": "dit-cache", "Node name for S&R": node_type},
        "widgets_values": values,
    })


def build(example: Example) -> dict[str, Any]:
    workflow = copy.deepcopy(load_template(example.package, example.template))
    defaults = dict(widget_inputs(example.node))
    unknown = {*example.settings, *(k for s in example.per_sampler.values() for k in s)} - set(defaults)
    if unknown:
        raise ValueError(f"{example.name}: {example.node} has no input(s) {sorted(unknown)}")
    workflow["nodes"] = [node for node in workflow["nodes"] if node["id"] not in example.drops]
    for graph in graphs(workflow):
        for other_cache in [node for node in graph["nodes"] if node["type"] == example.replaces]:
            _take_out(graph, other_cache)
        samplers = [node for node in graph["nodes"] if _model_slot(node) is not None]
        for sampler in sorted(samplers, key=lambda n: -n["pos"][0]):  # right to left: each column opens once
            values = {**defaults, **example.settings, **example.per_sampler.get(sampler["id"], {})}
            title = example.titles.get(sampler["id"], dit_cache.NODE_DISPLAY_NAME_MAPPINGS[example.node])
            _insert(workflow, graph, sampler, example.node, list(values.values()), title)
    left = min(n["pos"][0] for n in workflow["nodes"])
    top = min([n["pos"][1] for n in workflow["nodes"]] + [g["bounding"][1] for g in workflow.get("groups", [])])
    note_id = _new_id(workflow, "node")
    workflow["nodes"].append({
        "id": note_id, "type": "MarkdownNote", "pos": [left, top - NOTE_SIZE[1] - 60], "size": list(NOTE_SIZE),
        "flags": {}, "order": 0, "mode": 0, "title": "DiT Cache: recommended settings",
        "inputs": [], "outputs": [], "properties": {}, "widgets_values": [example.note.strip()],
        "color": "#232", "bgcolor": "#353",
    })
    return workflow


_IMAGE, _VIDEO = "comfyui_workflow_templates_media_image", "comfyui_workflow_templates_media_video"
_OTHER = "comfyui_workflow_templates_media_other"
_JSON = "comfyui_workflow_templates_json"  # ComfyUI 0.33's templates (0.11.44)
_README = "\nFull guide: the pack's README (Apply TeaCache / Apply Cache-DiT sections)."

EXAMPLES: tuple[Example, ...] = (
    Example(
        "flux_dev_teacache", _IMAGE, "flux_dev_full_text_to_image.json", TEACACHE,
        settings={"rel_l1_thresh": 0.4},
        note=f"""
## Apply TeaCache on Flux dev
- `model_type` auto picks the `flux` preset (TeaCache4FLUX coefficients).
- `rel_l1_thresh` **0.4** (TeaCache4FLUX reports 0.25 → 1.5x, 0.4 → 1.8x, 0.6 → 2.0x, 0.8 → 2.25x on an A800).
- Keep the sampler's **cfg at 1** (guidance comes from the prompt node's 3.5): on Flux TeaCache turns itself
  off for a run with cfg > 1.
- The log ends each run with `TeaCache [flux, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "flux_dev_cachedit", _IMAGE, "flux_dev_full_text_to_image.json", CACHEDIT,
        settings={"residual_diff_threshold": 0.08},
        note=f"""
## Apply Cache-DiT on Flux dev
- **F1B0, `residual_diff_threshold` 0.08**: cache-dit's docs report 1.6x on FLUX.1-dev (28 steps, L20);
  0.20 gave 2.9x there, with more visible change.
- Warm-up 4 and at most 3 cached steps in a row are SGLang's defaults.
- `calibrator` (taylorseer, foca, dmd) forecasts skipped steps; try it at higher thresholds.
- The log ends each run with `Cache-DiT [flux, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "qwen_image_cachedit", _IMAGE, "image_qwen_image.json", CACHEDIT,
        note=f"""
## Apply Cache-DiT on Qwen-Image
- SGLang's defaults: **F1B0, `residual_diff_threshold` 0.24, warm-up 4, at most 3 cached steps in a row**.
- Works at this template's cfg 2.5: each CFG branch keeps its own cache.
- The node sits after the (bypassed) Lightning LoRA and ModelSamplingAuraFlow. With the 8-step LoRA
  enabled, few steps are left to cache after the warm-up.
- The log ends each run with `Cache-DiT [qwen_image, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "qwen_image_teacache_cfg", _IMAGE, "image_qwen_image.json", TEACACHE,
        settings={"rel_l1_thresh": 0.4},
        note=f"""
## Apply TeaCache on Qwen-Image at cfg 2.5: switched off
This template samples with **cfg 2.5**. TeaCache on Qwen-Image (as in SGLang) keeps one cache for
both CFG branches, so at cfg ≠ 1 it **turns itself off for the run**: the image is exactly the
unpatched one and the log says `TeaCache: CFG is active (cfg=2.5) ... TeaCache is off for this run`.

To use it: sample at **cfg 1** (e.g. with the Lightning LoRA enabled), where `rel_l1_thresh`
**0.4** applies (coefficients borrowed from Flux: no published fit for Qwen-Image).
For CFG > 1, use Apply Cache-DiT (see `qwen_image_cachedit`).
{_README}""",
    ),
    Example(
        "z_image_turbo_cachedit", _OTHER, "image_z_image_turbo.json", CACHEDIT,
        note=f"""
## Apply Cache-DiT on Z-Image Turbo (9 steps)
- SGLang's defaults: **F1B0, `residual_diff_threshold` 0.24, warm-up 4, at most 3 cached steps in a row**.
- Keep TaylorSeer off on distilled models (SGLang); SCM presets are off below 8 steps.
- Few steps leave little to cache: expect a modest gain.
- The log ends each run with `Cache-DiT [z_image, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "wan21_t2v_teacache", _VIDEO, "text_to_video_wan.json", TEACACHE,
        settings={"rel_l1_thresh": 0.08},
        note=f"""
## Apply TeaCache on Wan 2.1 T2V 1.3B
- `model_type` auto picks `wan2.1_t2v_1.3B` (TeaCache4Wan2.1 coefficients) from the model's width.
- `rel_l1_thresh` **0.08** (TeaCache4Wan2.1: about 2x); for the 14B model auto picks `wan2.1_t2v_14B`, use **0.2**.
- Works at cfg 6: positive and negative branches keep separate caches.
- The log ends each run with `TeaCache [wan, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "wan22_14b_i2v_teacache", _VIDEO, "video_wan2_2_14B_i2v.json", TEACACHE,
        per_sampler={86: {"rel_l1_thresh": 0.3}, 57: {"rel_l1_thresh": 0.3},
                     85: {"rel_l1_thresh": 0.2}, 58: {"rel_l1_thresh": 0.2}},
        titles={86: "Apply TeaCache (high noise)", 57: "Apply TeaCache (high noise)",
                85: "Apply TeaCache (low noise)", 58: "Apply TeaCache (low noise)"},
        note=f"""
## Apply TeaCache on both Wan 2.2 14B experts
One node per expert, each with its own settings, as ComfyUI's two-pass KSamplerAdvanced split runs them.
- `model_type` auto picks `wan2.1_i2v_480p_14B` (the experts share Wan 2.1 14B's architecture;
  the coefficients are **borrowed**, not fitted for Wan 2.2).
- Starting points, not measured: high noise **0.3**, low noise **0.2** (the low-noise expert draws the
  details). Raise while the video still looks right.
- Each expert's part starts clean; its first and last step always compute.
- The active group uses the **4-step LightX2V LoRAs** (2 steps per expert): nothing is left to skip there.
  Caching pays off in the 20-step **fp8_scaled** group below (bypassed by default: select it and press Ctrl+B).
{_README}""",
    ),
    Example(
        "wan22_5b_ti2v_cachedit", _VIDEO, "video_wan2_2_5B_ti2v.json", CACHEDIT,
        note=f"""
## Apply Cache-DiT on Wan 2.2 TI2V 5B
- SGLang's defaults: **F1B0, `residual_diff_threshold` 0.24, warm-up 4, at most 3 cached steps in a row**.
- Works at cfg 5: each CFG branch keeps its own cache.
- The log ends each run with `Cache-DiT [wan, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "hunyuan_video_teacache", _VIDEO, "hunyuan_video_text_to_video.json", TEACACHE,
        settings={"rel_l1_thresh": 0.15},
        note=f"""
## Apply TeaCache on HunyuanVideo
- `model_type` auto picks `hunyuan_video` (TeaCache4HunyuanVideo coefficients).
- `rel_l1_thresh` **0.15** (TeaCache4HunyuanVideo: 0.1 → 1.6x, 0.15 → 2.1x on an A800).
- The node sits between ModelSamplingSD3 and BasicGuider, where the MODEL enters the sampler.
- The log ends each run with `TeaCache [hunyuan_video, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "flux2_dev_teacache", _JSON, "image_flux2_text_to_image.json", TEACACHE,
        settings={"rel_l1_thresh": 0.4},
        needs_033="the template switches its LoRA with ComfySwitchNode, a node 0.3.75 lacks",
        note=f"""
## Apply TeaCache on Flux.2 dev
- The node is **inside the subgraph** "Text to Image (Flux.2 Dev)": open it to change the settings.
- `model_type` auto picks the `flux2` preset: Flux.1's TeaCache4FLUX coefficients, **borrowed** (no published
  fit for Flux.2). `rel_l1_thresh` **0.4** is Flux.1's; calibrate your own with the Calibrate TeaCache node.
- Guidance comes from FluxGuidance (4) and the BasicGuider runs no CFG, so TeaCache stays on.
- With the 8-step Turbo LoRA enabled few steps are left to skip (the first and last always compute).
- The log ends each run with `TeaCache [flux, ...]: computed X/Y steps ... (Flux.2 dev)`.
{_README}""",
    ),
    Example(
        "flux2_klein_cachedit", _JSON, "image_flux2_klein_text_to_image.json", CACHEDIT,
        needs_033="0.3.75's editor also queues the nodes inside a bypassed subgraph",
        note=f"""
## Apply Cache-DiT on Flux.2 Klein 4B
- The nodes are **inside the subgraphs** (base and distilled): open one to change its settings.
- The **base** model samples 20 steps at cfg 5 (CFGGuider): Cache-DiT keeps each CFG branch's cache.
  SGLang's defaults: F1B0, `residual_diff_threshold` 0.24, warm-up 4, at most 3 cached steps in a row.
  (TeaCache would switch itself off here: on Flux.2 it keeps one cache for both CFG branches.)
- The **distilled** model (bypassed group, 4 steps, cfg 1): the warm-up of 4 leaves nothing to cache, so
  every step computes; lower `max_warmup_steps` only if the image still looks right.
- The log ends each run with `Cache-DiT [flux, ...]: computed X/Y steps ... (Flux.2 Klein 4B)`.
{_README}""",
    ),
    Example(
        "qwen_image_edit_2511_cachedit", _JSON, "image_qwen_image_edit_2511.json", CACHEDIT,
        needs_033="ComfySwitchNode, and Qwen-Image-Edit 2511's timestep-zero references",
        note=f"""
## Apply Cache-DiT on Qwen-Image-Edit 2511
- The node is **inside the subgraph** "Image Edit (Qwen-Image 2511)", after CFGNorm, on the KSampler's model.
- SGLang's defaults: **F1B0, `residual_diff_threshold` 0.24, warm-up 4, at most 3 cached steps in a row**.
- Works at this template's cfg 3: each CFG branch keeps its own cache. The reference images (timestep
  zero, 2511's method) are part of every block's input and are never replayed from another image.
- With the 4-step Lightning LoRA enabled, few steps are left to cache after the warm-up.
- The log ends each run with `Cache-DiT [qwen_image, ...]: computed X/Y steps ... (Qwen-Image-Edit 2511)`.
{_README}""",
    ),
    Example(
        "z_image_teacache", _JSON, "image_z_image.json", TEACACHE,
        settings={"rel_l1_thresh": 0.15},
        needs_033="ResolutionSelector and SaveImageAdvanced, nodes 0.3.75 lacks",
        note=f"""
## Apply TeaCache on Z-Image (base)
- The node is **inside the subgraph** "Text to Image (Z-Image-Base)", on the KSampler's model.
- `model_type` auto picks `z_image`: TeaCache4HunyuanVideo's coefficients, **borrowed** as SGLang does
  (no published fit for Z-Image). `rel_l1_thresh` **0.15** is HunyuanVideo's; calibrate your own with
  the Calibrate TeaCache node.
- Works at this template's cfg 4: positive and negative branches keep separate caches.
- The log ends each run with `TeaCache [z_image, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "z_image_turbo_fun_controlnet_cachedit", _JSON, "image_z_image_turbo_fun_union_controlnet.json", CACHEDIT,
        needs_033="0.3.75's Z-Image runs no per-block patches, so the ControlNet does nothing there",
        note=f"""
## Apply Cache-DiT with Z-Image Turbo's Fun Union ControlNet
- The node is **inside the subgraph**, after the ControlNet (QwenImageDiffsynthControlnet) and
  ModelSamplingAuraFlow, on the KSampler's model.
- **While the ControlNet is connected every step computes**: it adds to each block's output at every
  step, and a cached residual would replay last step's control. The image is exactly the uncached one;
  the log says `computed 8/8`. Without the ControlNet, SGLang's defaults apply (see `z_image_turbo_cachedit`).
- The log ends each run with `Cache-DiT [z_image, ...]: computed X/Y steps`.
{_README}""",
    ),
    Example(
        "hunyuan_video15_teacache", _JSON, "video_hunyuan_video_1.5_720p_t2v.json", TEACACHE,
        replaces="EasyCache", drops=(121,),
        note=f"""
## Apply TeaCache on HunyuanVideo 1.5 (720p T2V)
- This replaces the template's (bypassed) EasyCache nodes: use one cache, not both. Ours steps aside
  when EasyCache is also on the model.
- `model_type` auto picks `hunyuan_video_1.5`: TeaCache4HunyuanVideo's coefficients, **borrowed** (no
  published fit for 1.5). `rel_l1_thresh` **0.15** is HunyuanVideo's (0.1 → 1.6x, 0.15 → 2.1x on an A800
  there); calibrate your own with the Calibrate TeaCache node.
- Works at cfg 6: positive and negative branches keep separate caches.
- The 1080p upscale group (bypassed) has its own node on each of its two guiders (8 distilled steps, cfg 1).
- The log ends each run with `TeaCache [hunyuan_video, ...]: computed X/Y steps ... (HunyuanVideo 1.5)`.
{_README}""",
    ),
    Example(
        "wan22_14b_fun_control_teacache", _JSON, "video_wan2_2_14B_fun_control.json", TEACACHE,
        titles={96: "Apply TeaCache (high noise)", 169: "Apply TeaCache (high noise)",
                95: "Apply TeaCache (low noise)", 175: "Apply TeaCache (low noise)"},
        note=f"""
## Apply TeaCache on Wan 2.2 14B Fun Control
One node per expert, each with its own settings, as ComfyUI's two-pass KSamplerAdvanced split runs them.
- `model_type` auto picks `wan2.1_t2v_14B` (Fun Control shares Wan 2.1 14B's blocks; the coefficients
  are **borrowed**, not fitted for Fun Control). `rel_l1_thresh` **0.2** is Wan 2.1 T2V 14B's (about 2x).
- The control video's latent is part of every step's input: each expert keeps its own cache, and its
  part's first and last step always compute.
- The active group samples 20 steps (10 per expert) at cfg 3.5. The bypassed **4-step LightX2V** group
  (2 steps per expert) leaves nothing to skip.
{_README}""",
    ),
)


def render(workflow: dict[str, Any]) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with workflows/ instead of writing")
    args = parser.parse_args()
    stale = []
    for example in EXAMPLES:
        path = WORKFLOWS / f"{example.name}.json"
        text = render(build(example))
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale (run tools/make_workflows.py):", ", ".join(stale))
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
