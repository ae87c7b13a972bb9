"""ComfyUI's real graph editor (comfyui-frontend-package) in Debian's headless Chromium, driven by Playwright.

Used by the browser test and by tools/screenshots.py. Playwright only drives the browser: it
launches the system Chromium (``/usr/bin/chromium`` or ``$CHROMIUM``) and never downloads one.
Everything is read from the page itself: the editor's own graph (``window.app``), what it draws
on the canvas, the tooltips it shows under the mouse, and the API prompt it would queue.
"""
from __future__ import annotations

import os
import shutil
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfy_server import PACK_DIR_NAME, ComfyServer
from playwright.sync_api import Page, sync_playwright

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",  # containers often give /dev/shm only 64 MB
]
VIEWPORT = {"width": 1600, "height": 1000}
EDITOR_SETTINGS = {
    "Comfy.TutorialCompleted": True,  # no template browser on the first visit
    "Comfy.Workflow.ShowMissingModelsWarning": False,  # the test server has tiny models, not the real files
    "Comfy.Workflow.ShowMissingNodesWarning": True,  # a missing node must show its dialog
    "Comfy.EnableTooltips": True,
    "LiteGraph.Node.TooltipDelay": 50,
    "Comfy.Minimap.Visible": False,
}
OUR_PREFIX = "DiTCache_"

_LOAD_JS = """async ([url, name]) => {
  const response = await fetch(url);
  if (!response.ok) return {error: `HTTP ${response.status}`};
  await window.app.loadGraphData(await response.json(), true, true, name);
  await new Promise(r => setTimeout(r, 200));
  // Every node, those inside subgraphs too: `path` is the id graphToPrompt gives it ("outer:inner"),
  // `active` whether it runs (neither it nor a subgraph node around it is muted or bypassed).
  const walk = (graph, prefix, active) => graph.nodes.flatMap(n => {
    const here = {n, path: prefix + n.id, active: active && n.mode === 0};
    return n.isSubgraphNode?.() ? [here, ...walk(n.subgraph, here.path + ':', here.active)] : [here];
  });
  const all = walk(window.app.graph, '', true);
  const visible = el => el.offsetParent !== null;
  return {
    types: all.map(({n}) => n.type),
    missing: all.filter(({n}) => !window.LiteGraph.registered_node_types[n.type]).map(({n}) => n.type),
    dialogs: Array.from(document.querySelectorAll('.p-dialog')).filter(visible).map(d => d.innerText),
    error_toasts: Array.from(document.querySelectorAll('.p-toast-message-error')).map(t => t.innerText),
    ours: all.filter(({n}) => n.type.startsWith('PREFIX')).map(({n, path, active}) => ({
      id: n.id, path, active, type: n.type, title: n.title, mode: n.mode,
      widgets: (n.widgets || []).map(w => ({name: w.name, value: w.value})),
      inputs: n.inputs.map(i => ({name: i.name, type: i.type, link: i.link})),
    })),
  };
}""".replace("PREFIX", OUR_PREFIX)

# Client (page) coordinates of a node's title, its inputs' slots and its widgets, after centring it at scale 1.
_TARGETS_JS = """(id) => {
  const app = window.app, canvas = app.canvas, node = app.graph.getNodeById(id);
  canvas.ds.scale = 1;
  canvas.centerOnNode(node);
  canvas.setDirty(true, true);
  const rect = canvas.canvas.getBoundingClientRect();
  const client = ([x, y]) => {
    const [cx, cy] = canvas.ds.convertOffsetToCanvas([x, y]);
    return [rect.left + cx, rect.top + cy];
  };
  const widgetHeight = w => w.computedHeight ?? window.LiteGraph.NODE_WIDGET_HEIGHT;
  return {
    title: client([node.pos[0] + node.size[0] / 2, node.pos[1] - window.LiteGraph.NODE_TITLE_HEIGHT / 2]),
    slots: node.inputs.filter(i => !i.widget).map(i => [i.name, client(node.getConnectionPos(true, node.inputs.indexOf(i)))]),
    widgets: node.widgets.map(w => [w.name, client([node.pos[0] + node.size[0] / 2, node.pos[1] + w.y + widgetHeight(w) / 2])]),
  };
}"""


@dataclass(frozen=True)
class Loaded:
    """What the editor made of one workflow file."""

    types: list[str]
    missing: list[str]  # node types the editor has no definition for
    dialogs: list[str]  # text of dialogs left open (missing nodes, load errors)
    error_toasts: list[str]
    page_errors: list[str]  # uncaught exceptions in the page while loading
    ours: list[dict[str, Any]]  # our nodes as drawn (in subgraphs too): id, path, active, type, title, mode, widgets, inputs


def chromium_path() -> str:
    """The system Chromium; a clear failure when it is missing (`make setup` installs Debian's)."""
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"no Chromium at {path}: the browser test needs Debian's `chromium` (make setup runs "
            "`apt-get install -y chromium`), or set CHROMIUM to a Chromium binary"
        )
    return path


class Editor:
    """One page of the graph editor served by `server`."""

    def __init__(self, page: Page, server: ComfyServer, viewport: dict[str, int]):
        self.page = page
        self.viewport = viewport
        self.server = server
        self._page_errors: list[str] = []
        page.on("pageerror", lambda error: self._page_errors.append(str(error)))

    def templates(self) -> dict[str, list[str]]:
        """What the template browser lists per custom node pack (GET /api/workflow_templates)."""
        return self.page.evaluate("() => fetch('/api/workflow_templates').then(r => r.json())")

    def load(self, name: str) -> Loaded:
        """Open workflows/<name>.json as the template browser does: fetch it from the server, load it."""
        return self._load(f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json", name)

    def load_user_workflow(self, filename: str) -> Loaded:
        """Open one of the user's saved workflows (user/default/workflows/), as the Workflows sidebar does."""
        return self._load(f"/api/userdata/{urllib.parse.quote('workflows/' + filename, safe='')}", filename)

    def _load(self, url: str, name: str) -> Loaded:
        self._page_errors.clear()
        result = self.page.evaluate(_LOAD_JS, [url, name])
        if "error" in result:
            raise FileNotFoundError(f"{name}: {result['error']}")
        return Loaded(page_errors=list(self._page_errors), **result)

    def api_prompt(self) -> dict[str, Any]:
        """The API-format prompt the editor queues for the open workflow (its own graphToPrompt)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def swap_bypassed(self) -> None:
        """Enable every bypassed node and bypass every enabled one (notes aside), as a user switching paths does."""
        self.page.evaluate(
            """() => { for (const n of window.app.graph.nodes)
                         if (!n.type.endsWith('Note') && (n.mode === 0 || n.mode === 4)) n.mode = 4 - n.mode; }"""
        )

    def tooltips(self, node_id: int) -> dict[str, str]:
        """Hover the node's title, input slots and widgets; the tooltip text the editor shows for each.

        The title's tooltip is the node's description; it is returned under the key "" (empty).
        """
        targets = self.page.evaluate(_TARGETS_JS, node_id)
        shown = {"": self._hover(*targets["title"])}
        for name, (x, y) in targets["slots"] + targets["widgets"]:
            shown[name] = self._hover(x, y)
        return shown

    def _hover(self, x: float, y: float) -> str:
        self.page.mouse.move(5, self.viewport["height"] / 2)  # leave, so the next move starts a new hover
        self.page.mouse.click(5, self.viewport["height"] / 2)  # a click on the canvas hides the last tooltip
        self.page.mouse.move(x, y, steps=2)
        tooltip = self.page.locator(".node-tooltip")
        try:
            tooltip.wait_for(state="visible", timeout=2000)
        except Exception:
            return ""
        return tooltip.inner_text()

    def screenshot(self, node_ids: list[int], path: Path, padding: int = 40) -> None:
        """Save a PNG of the canvas around these nodes (titles included), at scale 1."""
        box = self.page.evaluate(
            """(ids) => {
              const app = window.app, canvas = app.canvas;
              const nodes = ids.map(id => app.graph.getNodeById(id));
              canvas.deselectAll?.();
              canvas.ds.scale = 1;
              const title = window.LiteGraph.NODE_TITLE_HEIGHT;
              const x0 = Math.min(...nodes.map(n => n.pos[0])), y0 = Math.min(...nodes.map(n => n.pos[1] - title));
              const x1 = Math.max(...nodes.map(n => n.pos[0] + n.size[0])), y1 = Math.max(...nodes.map(n => n.pos[1] + n.size[1]));
              const rect = canvas.canvas.getBoundingClientRect();
              canvas.ds.offset = [rect.width / 2 - (x0 + x1) / 2, rect.height / 2 - (y0 + y1) / 2];
              canvas.setDirty(true, true);
              const [cx, cy] = canvas.ds.convertOffsetToCanvas([x0, y0]);
              return {x: rect.left + cx, y: rect.top + cy, width: x1 - x0, height: y1 - y0};
            }""",
            node_ids,
        )
        self.page.mouse.move(5, self.viewport["height"] - 5)
        self.page.wait_for_timeout(300)  # one frame drawn at the new offset
        clip = {
            "x": max(box["x"] - padding, 0), "y": max(box["y"] - padding, 0),
            "width": box["width"] + 2 * padding, "height": box["height"] + 2 * padding,
        }
        self.page.screenshot(path=str(path), clip=clip)


@contextmanager
def open_editor(server: ComfyServer, viewport: dict[str, int] | None = None) -> Iterator[Editor]:
    """Chromium with one page of the editor at `server`, settings chosen for unattended runs."""
    server.save_settings(EDITOR_SETTINGS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        try:
            viewport = viewport or VIEWPORT
            page = browser.new_page(viewport=viewport)
            # The "Nodes 2.0" banner remembers its dismissal in local storage.
            page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
            editor = Editor(page, server, viewport)
            page.goto(server.url)
            page.wait_for_function("() => window.app?.graph && window.app.vueAppReady", timeout=60_000)
            yield editor
        finally:
            browser.close()
