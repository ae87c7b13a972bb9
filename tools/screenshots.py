"""Redraw docs/*.png: our nodes in the real graph editor, as the example workflows show them.

    .venv/bin/python tools/screenshots.py      (or: make screenshots)

Starts the test ComfyUI server with its real frontend, opens each example in headless Chromium
(tests/editor.py) and saves the canvas around our node(s), the node feeding them and the sampler.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tests"))
import conftest  # noqa: F401  (the tests' set-up: the host ComfyUI on sys.path, the pack as `dit_cache`)
from comfy_server import ComfyServer
from editor import Editor, open_editor

SHOTS = {  # file in docs/ -> example workflow whose active nodes of ours it shows
    "apply_teacache.png": "flux_dev_teacache",
    "apply_cachedit.png": "z_image_turbo_cachedit",
    "wan22_two_experts.png": "wan22_14b_i2v_teacache",
}


def neighbours(editor: Editor, node_ids: list[int]) -> list[int]:
    """The nodes, the node feeding each one's MODEL input, and the node each one feeds."""
    return editor.page.evaluate(
        """(ids) => {
          const graph = window.app.graph, out = new Set(ids);
          for (const id of ids) {
            const node = graph.getNodeById(id);
            out.add(graph.links.get?.(node.inputs[0].link)?.origin_id ?? graph.links[node.inputs[0].link].origin_id);
            for (const link of node.outputs[0].links) out.add(graph.links.get?.(link)?.target_id ?? graph.links[link].target_id);
          }
          return [...out];
        }""",
        node_ids,
    )


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    with ComfyServer(frontend=True) as server, open_editor(server, viewport={"width": 2400, "height": 1400}) as editor:
        for file, workflow in SHOTS.items():
            ours = [node["id"] for node in editor.load(workflow).ours if node["mode"] == 0]
            editor.screenshot(neighbours(editor, ours), DOCS / file)
            print("wrote", DOCS / file)


if __name__ == "__main__":
    main()
