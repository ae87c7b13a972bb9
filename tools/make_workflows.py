"""Build workflows/*.json from ComfyUI's official templates: our node on the sampler's MODEL link, plus a note.

Each example starts from the template of ComfyUI's `comfyui-workflow-templates-media-*` packages for
that model (their wiring and the model file names users download; the releases pinned in
tools/template-sources.txt, which `make` puts in .host/templates, so every host builds the same files)
and changes only this: one Apply TeaCache / Apply Cache-DiT node is inserted on every link that brings the MODEL into a
sampler (after LoRA and ModelSampling nodes), the sampler's column moves right to make room, and a
note with the recommended settings is added. Run it again after a node gains inputs:

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
SAMPLER_MODEL_INPUTS = {"KSampler": "model", "KSamplerAdvanced": "model", "BasicGuider": "model"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MIN_WIDTH, COLUMN_GAP, WIDGET_HEIGHT, TITLE_HEIGHT = 340, 40, 24, 30
NOTE_SIZE = (520, 300)


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


def _shift_right_of(workflow: dict[str, Any], x0: float, rows: tuple[float, float], width: float) -> None:
    """Make room at x0 for a new node spanning `rows` (y from, to): nodes there and right of it move right.

    Nodes above or below that band stay (e.g. the ModelSampling node feeding it); groups in it across x0 widen.
    """
    for node in workflow["nodes"]:
        top, bottom = node["pos"][1] - TITLE_HEIGHT, node["pos"][1] + node["size"][1]
        if node["pos"][0] >= x0 - 1 and top < rows[1] and bottom > rows[0]:
            node["pos"][0] += width
    for group in workflow.get("groups", []):
        x, y, w, h = group["bounding"]
        if y < rows[1] and y + h > rows[0]:
            if x >= x0 - 1:
                group["bounding"][0] += width
            elif x0 < x + w:
                group["bounding"][2] += width


def _model_slot(node: dict[str, Any]) -> int | None:
    """The index of a sampler's linked MODEL input; None for other nodes and unlinked samplers."""
    for slot, entry in enumerate(node.get("inputs", [])):
        if entry["name"] == SAMPLER_MODEL_INPUTS.get(node["type"]) and entry.get("link") is not None:
            return slot
    return None


def _insert(workflow: dict[str, Any], sampler: dict[str, Any], node_type: str, values: list[Any], title: str) -> None:
    """Put a new `node_type` node on the link into `sampler`'s MODEL input, in a new column left of it."""
    slot = _model_slot(sampler)
    link_id = sampler["inputs"][slot]["link"]
    link = next(link for link in workflow["links"] if link[0] == link_id)
    node_id = workflow["last_node_id"] = workflow["last_node_id"] + 1
    new_link = workflow["last_link_id"] = workflow["last_link_id"] + 1
    x, y = sampler["pos"]
    size = [max(MIN_WIDTH, 9 * len(title) + 60), 50 + WIDGET_HEIGHT * len(values)]  # the whole title shows
    _shift_right_of(workflow, x, (y - TITLE_HEIGHT, y + size[1]), size[0] + COLUMN_GAP)
    link[3], link[4] = node_id, 0  # source -> our node
    workflow["links"].append([new_link, node_id, 0, sampler["id"], slot, "MODEL"])  # our node -> sampler
    sampler["inputs"][slot]["link"] = new_link
    workflow["nodes"].append({
        "id": node_id, "type": node_type, "pos": [x, y], "size": size,
        "flags": {}, "order": 0, "mode": sampler["mode"], "title": title,
        "inputs": [{"name": "model", "type": "MODEL", "link": link_id}],
        "outputs": [{"name": "MODEL", "type": "MODEL", "slot_index": 0, "links": [new_link]}],
        "properties": {"cnr_id": "dit-cache", "Node name for S&R": node_type},
        "widgets_values": values,
    })


def build(example: Example) -> dict[str, Any]:
    workflow = copy.deepcopy(load_template(example.package, example.template))
    samplers = [node for node in workflow["nodes"] if _model_slot(node) is not None]
    defaults = dict(widget_inputs(example.node))
    unknown = {*example.settings, *(k for s in example.per_sampler.values() for k in s)} - set(defaults)
    if unknown:
        raise ValueError(f"{example.name}: {example.node} has no input(s) {sorted(unknown)}")
    for sampler in sorted(samplers, key=lambda n: -n["pos"][0]):  # right to left: each column opens once
        values = {**defaults, **example.settings, **example.per_sampler.get(sampler["id"], {})}
        title = example.titles.get(sampler["id"], dit_cache.NODE_DISPLAY_NAME_MAPPINGS[example.node])
        _insert(workflow, sampler, example.node, list(values.values()), title)
    left = min(n["pos"][0] for n in workflow["nodes"])
    top = min([n["pos"][1] for n in workflow["nodes"]] + [g["bounding"][1] for g in workflow.get("groups", [])])
    note_id = workflow["last_node_id"] = workflow["last_node_id"] + 1
    workflow["nodes"].append({
        "id": note_id, "type": "MarkdownNote", "pos": [left, top - NOTE_SIZE[1] - 60], "size": list(NOTE_SIZE),
        "flags": {}, "order": 0, "mode": 0, "title": "DiT Cache: recommended settings",
        "inputs": [], "outputs": [], "properties": {}, "widgets_values": [example.note.strip()],
        "color": "#232", "bgcolor": "#353",
    })
    return workflow


_IMAGE, _VIDEO = "comfyui_workflow_templates_media_image", "comfyui_workflow_templates_media_video"
_OTHER = "comfyui_workflow_templates_media_other"
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
- `enable_taylorseer` extrapolates skipped steps; try it at higher thresholds.
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
