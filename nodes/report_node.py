"""Cache report: what TeaCache or Cache-DiT did in the latest sampling run, as an IMAGE and as JSON."""

from __future__ import annotations

import json
from typing import Any

from comfy_api.latest import io
from PIL import Image

from .calibration_node import image_batch
from .report_images import render_report, report_data


def run_reports(model: Any) -> list[dict]:
    """The report data of every caching method on this MODEL that has finished a run."""
    # Imported here: the patching code needs ComfyUI's patching API, which loading the pack must not.
    from ..model_patches.cachedit_patch import CacheDiTPatch
    from ..model_patches.sampling_hooks import installed
    from ..model_patches.teacache_patch import TeaCachePatch

    reports = []
    for patch_type, threshold in ((TeaCachePatch, "rel_l1_thresh"), (CacheDiTPatch, "residual_diff_threshold")):
        patch = installed(model, patch_type)
        if patch is not None and patch.last_run is not None:
            config = patch.config
            data = report_data(patch.last_run, patch.method, config.tag(), getattr(config, threshold), patch.member)
            reports.append(data)
    return reports


def stacked(images: list[Image.Image]) -> Image.Image:
    """Images one above the other (a MODEL can carry both methods)."""
    result = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), (255, 255, 255))
    top = 0
    for image in images:
        result.paste(image, (0, top))
        top += image.height
    return result


class CacheReport(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiTCache_CacheReport",
            display_name="Cache report",
            category="DiT Cache",
            description=(
                "What the cache did in the latest sampling run of this MODEL (Apply TeaCache or Apply Cache-DiT): "
                "a timeline of computed and cached steps per CFG branch, the accumulated change against the "
                "threshold, and the totals, as an IMAGE; the same data as JSON for scripts. Place it after the "
                "sampler."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL output of Apply TeaCache or Apply Cache-DiT."),
                io.Latent.Input("latent", tooltip="The sampler's output: makes the report run after sampling."),
            ],
            outputs=[io.Image.Output(display_name="report"), io.String.Output(display_name="json")],
        )

    @classmethod
    def execute(cls, model: Any, latent: Any) -> io.NodeOutput:
        reports = run_reports(model)
        if not reports:
            raise ValueError(
                "Cache report: this MODEL has no finished TeaCache or Cache-DiT run; connect the MODEL that "
                "the sampler used and the sampler's LATENT output"
            )
        image = stacked([render_report(r) for r in reports])
        return io.NodeOutput(image_batch(image), json.dumps({"runs": reports}, indent=1))
