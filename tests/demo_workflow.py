"""The demo's workflow for the editor: the trained Flux fixture through Apply Cache-DiT, with its Cache report.

One list of nodes gives both forms: the API prompt the demo queues, and the editor's workflow
file, saved where the editor lists the user's workflows (Workflows sidebar). Widget order,
defaults and socket types come from the running server's /object_info, so the file is what
the editor itself would save. The fixture nodes are the test-only ones: this workflow exists
only on the demo's (and the tests') server, never in the pack's `workflows/`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfy_server import ComfyServer

NAME = "dit-cache demo - trained Flux fixture.json"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# README's "Settings the data supports", Flux at cfg 1: DBCache F1B0 + TaylorSeer order 2 at 0.24 (2x fewer blocks).
FLUX_CACHEDIT = {
    "Fn_compute_blocks": 1, "Bn_compute_blocks": 0, "residual_diff_threshold": 0.24,
    "calibrator": "taylorseer", "taylorseer_order": 2,
}
FLUX_STEPS = 28
NOTE = """## The trained Flux fixture, cached

A small Flux trained on coloured shapes (one class per prompt), so its steps change the way a trained
model's do. **Apply Cache-DiT** runs at the settings README recommends for Flux at cfg 1.

Change `residual_diff_threshold` (0 = never cache) and queue again: the Cache report shows which
steps were computed and which were cached, and the picture what the fixture drew."""


@dataclass(frozen=True)
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    size: tuple[int, int] = (320, 110)
    widgets: dict[str, Any] = field(default_factory=dict)  # values that differ from the node's defaults
    links: dict[str, tuple[int, int]] = field(default_factory=dict)  # input -> (source node id, output index)


def nodes(class_index: int = 3, seed: int = 0) -> list[Node]:
    fixture = {"fixture": "flux"}
    return [
        Node(1, "DiTCacheTest_TrainedModel", (0, 0), (320, 60), fixture),
        Node(2, "DiTCache_ApplyCacheDiT", (360, 0), (360, 430), FLUX_CACHEDIT, {"model": (1, 0)}),
        Node(3, "DiTCacheTest_TrainedConditioning", (0, 120), (320, 90), {**fixture, "class_index": class_index}),
        Node(4, "DiTCacheTest_TrainedConditioning", (0, 260), (320, 90), {**fixture, "class_index": -1}),
        Node(5, "DiTCacheTest_TrainedLatent", (0, 400), (320, 60), fixture),
        Node(6, "KSampler", (760, 0), (320, 270),
             {"seed": seed, "steps": FLUX_STEPS, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple"},
             {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)}),
        Node(7, "DiTCache_CacheReport", (1120, 0), (300, 80), {}, {"model": (2, 0), "latent": (6, 0)}),
        Node(8, "PreviewImage", (1120, 130), (640, 420), {}, {"images": (7, 0)}),
        Node(9, "DiTCacheTest_LatentPicture", (760, 320), (320, 50), {}, {"samples": (6, 0)}),
        Node(10, "PreviewImage", (760, 420), (320, 300), {}, {"images": (9, 0)}),
    ]


def _inputs(info: dict[str, Any]) -> list[tuple[str, list]]:
    return [*info["input"]["required"].items(), *info["input"].get("optional", {}).items()]


def _is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


def widget_values(node: Node, info: dict[str, Any]) -> dict[str, Any]:
    """Every widget input of the node, in the editor's order: the node's value, else its default."""
    values = {}
    for name, spec in _inputs(info):
        if _is_widget(spec):
            options = spec[1] if len(spec) > 1 else {}
            choices = spec[0] if isinstance(spec[0], list) else options.get("options", [None])  # V1 / V3 combos
            default = options.get("default", choices[0])
            values[name] = node.widgets.get(name, default)
    unknown = set(node.widgets) - set(values)
    if unknown:
        raise ValueError(f"{node.type} has no widget inputs {sorted(unknown)}")
    return values


def api_prompt(graph: list[Node], object_info: dict[str, Any]) -> dict[str, Any]:
    """The prompt the editor queues for this workflow."""
    return {
        str(node.id): {
            "class_type": node.type,
            "inputs": {**widget_values(node, object_info[node.type]),
                       **{name: [str(source), slot] for name, (source, slot) in node.links.items()}},
        }
        for node in graph
    }


def ui_workflow(graph: list[Node], object_info: dict[str, Any]) -> dict[str, Any]:
    """The workflow file as the editor saves it: nodes with sockets and widget values, links, one note."""
    links: list[list[Any]] = []
    outputs: dict[tuple[int, int], list[int]] = {}
    ui_nodes = []
    for node in graph:
        info = object_info[node.type]
        sockets = [(name, spec[0]) for name, spec in _inputs(info) if not _is_widget(spec)]
        inputs = []
        for slot, (name, kind) in enumerate(sockets):
            link = None
            if name in node.links:
                source, source_slot = node.links[name]
                link = len(links) + 1
                links.append([link, source, source_slot, node.id, slot, kind])
                outputs.setdefault((source, source_slot), []).append(link)
            inputs.append({"name": name, "type": kind, "link": link})
        specs = dict(_inputs(info))
        widgets = []
        for name, value in widget_values(node, info).items():
            widgets.append(value)
            if len(specs[name]) > 1 and specs[name][1].get("control_after_generate"):
                widgets.append("fixed")  # the editor's "control after generate" widget: keep the seed
        ui_nodes.append({
            "id": node.id, "type": node.type, "pos": list(node.pos), "size": list(node.size), "flags": {},
            "order": len(ui_nodes), "mode": 0, "inputs": inputs, "properties": {"Node name for S&R": node.type},
            "widgets_values": widgets,
        })
    for ui_node in ui_nodes:
        info = object_info[ui_node["type"]]
        ui_node["outputs"] = [
            {"name": name, "type": kind, "slot_index": i, "links": outputs.get((ui_node["id"], i), [])}
            for i, (kind, name) in enumerate(zip(info["output"], info["output_name"]))
        ]
    note_id = max(node.id for node in graph) + 1
    ui_nodes.append({
        "id": note_id, "type": "MarkdownNote", "pos": [360, 480], "size": [360, 240], "flags": {},
        "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [NOTE],
    })
    return {
        "last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes, "links": links,
        "groups": [], "config": {}, "extra": {}, "version": 0.4,
    }


def install(server: ComfyServer, graph: list[Node]) -> tuple[Path, dict[str, Any]]:
    """Save the workflow where the server's editor lists the user's workflows; (its path, the API prompt)."""
    object_info = server.all_object_info()
    path = server.base_dir / "user" / "default" / "workflows" / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ui_workflow(graph, object_info), indent=1), encoding="utf-8")
    return path, api_prompt(graph, object_info)
