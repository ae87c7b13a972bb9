"""`make run`'s demo: real skipping at the recommended settings, its picture, and its workflow in the editor.

One ComfyUI server with its real frontend for the module, as the demo runs it; the demo's own
functions drive it, so what `make run` prints is what is tested here.
"""
from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import demo
import demo_workflow
import pytest
from comfy_server import ComfyServer
from editor import open_editor
from PIL import Image

CACHEDIT_CACHED = re.compile(r"Cache-DiT \[flux, (?P<tag>[^\]]+)\]: computed \d+/\d+ steps; (?P<cached>\d+) of (?P<calls>\d+)")


@pytest.fixture(scope="module")
def server() -> Iterator[ComfyServer]:
    with ComfyServer(frontend=True) as running:
        yield running


@pytest.fixture(scope="module")
def flux_rows(server: ComfyServer) -> list[demo.Row]:
    return demo.compare_fixture(server, demo.FIXTURES[0], demo.QUICK_SAMPLES, progress=lambda line: None)


def test_the_trained_flux_fixture_skips_real_work_at_the_recommended_settings(flux_rows: list[demo.Row]) -> None:
    by_label = {row.setting.label: row for row in flux_rows}
    assert list(by_label) == ["uncached", "EasyCache (ComfyUI)", "Apply TeaCache", "Apply Cache-DiT"]
    uncached = by_label["uncached"]
    assert (uncached.blocks, uncached.psnr_db) == (uncached.total_blocks, float("inf"))
    # README's "Settings the data supports": about 2x at 50+ dB (Cache-DiT), 2.5x at 35+ dB (TeaCache).
    assert by_label["Apply Cache-DiT"].block_speedup > 1.7 and by_label["Apply Cache-DiT"].psnr_db > 45
    assert by_label["Apply TeaCache"].block_speedup > 2.0 and by_label["Apply TeaCache"].psnr_db > 33


def test_the_picture_shows_each_method_and_a_cache_report(flux_rows: list[demo.Row], server: ComfyServer,
                                                          tmp_path: Path) -> None:
    path = tmp_path / "demo.png"
    demo.draw_picture(flux_rows, server, path)
    picture = Image.open(path)
    tile = 16 * 8  # the flux fixture's 16x16 latent at 8 pixels per latent pixel
    assert picture.width > len(flux_rows) * tile + 600 and picture.height >= tile
    # The first tile is the uncached latent drawn in colour, not a blank.
    colours = picture.crop((12, 12, 12 + tile, 12 + tile)).getcolors(maxcolors=tile * tile)
    assert colours is not None and len(colours) > 8


def _listed_workflows(server: ComfyServer) -> list[str]:
    """What the editor's Workflows sidebar lists (GET /userdata?dir=workflows)."""
    with urllib.request.urlopen(f"{server.url}/api/userdata?dir=workflows&recurse=true", timeout=30) as response:
        return json.load(response)


def test_the_demo_workflow_opens_in_the_editor_and_runs_with_the_report_following_the_threshold(
    server: ComfyServer,
) -> None:
    path, prompt = demo_workflow.install(server, demo_workflow.nodes())
    assert path.name in _listed_workflows(server)
    with open_editor(server) as editor:
        loaded = editor.load_user_workflow(path.name)
        queued = editor.api_prompt()
    assert (loaded.missing, loaded.dialogs, loaded.error_toasts, loaded.page_errors) == ([], [], [], [])
    assert "MarkdownNote" in loaded.types
    # The file holds what the demo queues: every widget in its place, every link where it belongs.
    assert {k: (v["class_type"], v["inputs"]) for k, v in queued.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in prompt.items()
    }

    def run(threshold: float) -> tuple[Any, re.Match]:
        graph = json.loads(json.dumps(queued))
        graph["2"]["inputs"]["residual_diff_threshold"] = threshold
        result = server.run(graph)
        assert result.status == "success", f"{result.error}\n{server.log_tail()}"
        match = CACHEDIT_CACHED.search(result.log)
        assert match is not None, result.log
        return result, match

    result, recommended = run(demo_workflow.FLUX_CACHEDIT["residual_diff_threshold"])
    assert int(recommended["cached"]) > 0 and recommended["calls"] == str(demo_workflow.FLUX_STEPS)
    for preview in ("8", "10"):  # the Cache report and the picture of the latent
        assert len(result.history["outputs"][preview]["images"]) == 1
    _, never = run(0.0)  # a user turning the threshold down: the report follows
    assert never["cached"] == "0" and "R0.0" in never["tag"]
