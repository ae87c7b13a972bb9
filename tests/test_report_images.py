"""The Cache report and the calibration report as pictures: what each pixel of the drawing says."""
from __future__ import annotations

import json
import math

import numpy as np
from dit_cache.caching.records import CallRecord, RunSummary
from dit_cache.nodes import report_images as ri

TRUE = (5.0, -4.0, 2.0, 0.5, 0.01)


def report_summary() -> RunSummary:
    a, b = "cond", "uncond"
    records = (
        CallRecord(0, (a, b), (None, None), True, (None, None)),
        CallRecord(1, (a, b), (0.1, 0.2), False, (0.1, 0.2)),
        CallRecord(2, (a, b), (0.3, 0.1), True, (0.4, 0.3)),
        CallRecord(3, (a,), (0.05,), False, (0.05,)),
    )
    return RunSummary(5, records)


def test_report_data_and_image_show_each_step_and_branch() -> None:
    data = ri.report_data(report_summary(), "TeaCache", "TeaCache_R0.35", 0.35)
    assert (data["calls"], data["calls_computed"], data["steps_computed"], data["branches"]) == (4, 2, 2, 2)
    assert data["speedup"] == 2.0 and data["per_call"][2]["signal"] == [0.4, 0.3]
    assert json.loads(json.dumps(data)) == data  # plain data
    pixels = np.asarray(ri.render_report(data))
    layout = ri.ReportLayout(5, 2)
    expected = {(0, 0): ri.COMPUTED, (1, 0): ri.CACHED, (2, 1): ri.COMPUTED, (3, 0): ri.CACHED,
                (3, 1): ri.NO_CALL, (4, 0): ri.NO_CALL}
    for (step, row), color in expected.items():
        x0, y0, x1, y1 = layout.cell(step, row)
        assert tuple(pixels[(y0 + y1) // 2, (x0 + x1) // 2]) == color, (step, row)
    top = ri.chart_scale(data)
    _, threshold_y = layout.chart_point(0, 0.35, top)
    assert tuple(pixels[threshold_y, layout.left + 2]) == ri.THRESHOLD
    x, y = layout.chart_point(2, 0.3, top)
    assert tuple(pixels[y, x]) == ri.BRANCH_COLORS[1]
    x, y = layout.chart_point(1, 0.1, top)
    assert tuple(pixels[y, x]) == ri.BRANCH_COLORS[0]


def test_fit_image_draws_samples_and_the_fitted_curve() -> None:
    x = np.array([0.1, 0.2, 0.3, 0.45])
    y = np.polyval(TRUE, x) + np.array([0.02, -0.02, 0.02, -0.02])
    pixels = np.asarray(ri.render_fit(x, y, TRUE, ["caption"]))
    layout = ri.FitLayout.for_samples(x, y)
    for a, b in zip(x, y, strict=True):
        px, py = layout.point(a, b)
        assert tuple(pixels[py, px]) == ri.SAMPLES
    for a, drawn in ((0.05, False), (0.15, True), (0.25, True), (0.4, True)):  # over the samples' range only
        px, py = layout.point(a, float(np.polyval(TRUE, a)))
        around = {tuple(pixels[py + dy, px + dx]) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
        assert (ri.THRESHOLD in around) == drawn, a
    assert math.isclose(ri.to_array(ri.render_fit(x, y, TRUE, [])).max(), 1.0)
