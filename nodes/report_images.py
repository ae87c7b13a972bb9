"""Pictures of what a cache did and of a calibration fit, drawn with Pillow (ComfyUI already needs it).

Both take plain data (the run report's JSON, the fit's samples) so that scripts get the same
numbers as the image. Layout objects are public: tests read back the pixels they place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..caching.records import RunSummary

WIDTH = 800
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GRID = (210, 210, 210)
COMPUTED = (46, 160, 67)  # green: the transformer ran
CACHED = (240, 150, 30)  # orange: the cache stood in
NO_CALL = (235, 235, 235)  # no call of this branch in this step
THRESHOLD = (210, 30, 30)
SAMPLES = (31, 100, 200)
BRANCH_COLORS = ((31, 100, 200), (150, 80, 190), (20, 150, 160), (120, 120, 120))


def report_data(summary: RunSummary, method: str, settings: str, threshold: float, member: str = "") -> dict:
    """A run's report as plain data (the Cache report node's JSON): per call and totals.

    `signal` is what was compared with the threshold: TeaCache's accumulated rescaled change,
    Cache-DiT's residual diff of the first blocks (None where nothing was compared). A row of the
    timeline is one call identity: a CFG branch, in its context window, of its kind of call.
    """
    branch_ids: dict[object, int] = {}
    calls = []
    for record in summary.records:
        branches = [branch_ids.setdefault(key, len(branch_ids)) for key in record.branches]
        signal = record.signal or record.rel_l1
        calls.append(
            {
                "step": record.step,
                "branches": branches,
                "computed": record.computed,
                "change": list(record.rel_l1),
                "signal": [s if s is not None and s >= 0 else None for s in signal],
            }
        )
    return {
        "method": method,
        "member": member,
        "settings": settings,
        "threshold": threshold,
        "total_steps": summary.total_steps,
        "branches": len(branch_ids),
        "rows": [_row_label(key, row) for key, row in branch_ids.items()],
        "steps_computed": summary.steps_computed if summary.records else summary.total_steps,
        "calls": summary.calls,
        "calls_computed": summary.calls_computed,
        "speedup": summary.calls / summary.calls_computed if summary.calls_computed else 1.0,
        "disabled": summary.disabled,
        "per_call": calls,
    }


def _row_label(key: object, row: int) -> str:
    label = getattr(key, "label", None)  # a call identity names itself; other keys are numbered
    return label() if callable(label) else f"branch {row}"


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def to_array(image: Image.Image) -> np.ndarray:
    """HxWx3 float32 in 0..1 (one image of ComfyUI's IMAGE batch)."""
    return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0


@dataclass(frozen=True)
class ReportLayout:
    """Where a run report puts the timeline cells and the chart."""

    total_steps: int
    branches: int
    left: int = 90
    right: int = WIDTH - 20
    top: int = 46
    row_height: int = 22
    chart_height: int = 220

    @property
    def cell_width(self) -> float:
        return (self.right - self.left) / max(self.total_steps, 1)

    def cell(self, step: int, row: int) -> tuple[int, int, int, int]:
        x0 = self.left + step * self.cell_width
        y0 = self.top + row * self.row_height
        return round(x0) + 1, y0 + 1, round(x0 + self.cell_width) - 1, y0 + self.row_height - 2

    @property
    def chart_top(self) -> int:
        return self.top + max(self.branches, 1) * self.row_height + 40

    @property
    def chart_bottom(self) -> int:
        return self.chart_top + self.chart_height

    @property
    def height(self) -> int:
        return self.chart_bottom + 70

    def chart_point(self, step: int, value: float, top_value: float) -> tuple[int, int]:
        x = self.left + (step + 0.5) * self.cell_width
        y = self.chart_bottom - min(value / top_value, 1.0) * self.chart_height
        return round(x), round(y)


def chart_scale(data: dict) -> float:
    """The value at the top of the chart: room above the threshold and every signal."""
    values = [s for call in data["per_call"] for s in call["signal"] if s is not None]
    return max([data["threshold"] * 1.5, *values, 1e-6]) * 1.05


def step_states(data: dict) -> dict[tuple[int, int], bool]:
    """(step, branch) -> computed (any call of that branch in that step computed)."""
    states: dict[tuple[int, int], bool] = {}
    for call in data["per_call"]:
        for branch in call["branches"]:
            states[(call["step"], branch)] = states.get((call["step"], branch), False) or call["computed"]
    return states


def render_report(data: dict) -> Image.Image:
    """Timeline (computed / cached per step and branch), the signal against the threshold, the totals."""
    rows = data.get("rows") or [f"branch {row}" for row in range(data["branches"])]
    layout = ReportLayout(data["total_steps"], data["branches"], left=max(90, 16 + 6 * max(map(len, rows), default=0)))
    image = Image.new("RGB", (WIDTH, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.text((10, 8), f"{data['method']}  {data['settings']}  {data['member']}".rstrip(), fill=INK, font=font)
    draw.text((10, 24), "green: computed   orange: cached   grey: no call", fill=INK, font=font)
    states = step_states(data)
    for row in range(data["branches"]):
        draw.text((10, layout.top + row * layout.row_height + 5), rows[row], fill=INK, font=font)
        for step in range(data["total_steps"]):
            state = states.get((step, row))
            color = NO_CALL if state is None else COMPUTED if state else CACHED
            draw.rectangle(layout.cell(step, row), fill=color)
    every = math.ceil(data["total_steps"] / 25)  # step numbers under the timeline, at most 25 of them
    for step in range(0, data["total_steps"], every):
        x0, _, _, _ = layout.cell(step, 0)
        draw.text((x0 + 1, layout.top + max(data["branches"], 1) * layout.row_height + 2), str(step), fill=INK, font=font)

    top_value = chart_scale(data)
    draw.rectangle((layout.left, layout.chart_top, layout.right, layout.chart_bottom), outline=GRID)
    draw.text((10, layout.chart_top - 16), "signal (dots) vs threshold (red line)", fill=INK, font=font)
    draw.text((10, layout.chart_top), f"{top_value:.3g}", fill=INK, font=font)
    draw.text((10, layout.chart_bottom - 12), "0", fill=INK, font=font)
    threshold_y = layout.chart_point(0, data["threshold"], top_value)[1]
    for x in range(layout.left, layout.right, 12):
        draw.line((x, threshold_y, min(x + 7, layout.right), threshold_y), fill=THRESHOLD, width=2)
    for branch in range(data["branches"]):
        color = BRANCH_COLORS[branch % len(BRANCH_COLORS)]
        points = [
            layout.chart_point(call["step"], signal, top_value)
            for call in data["per_call"]
            for b, signal in zip(call["branches"], call["signal"], strict=True)
            if b == branch and signal is not None
        ]
        if len(points) > 1:
            draw.line(points, fill=color, width=1)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=color)

    totals = (
        f"computed {data['steps_computed']}/{data['total_steps']} steps, {data['calls_computed']}/{data['calls']} "
        f"transformer calls: {data['speedup']:.2f}x fewer evaluations; threshold {data['threshold']:.4g}"
    )
    draw.text((10, layout.chart_bottom + 14), totals, fill=INK, font=font)
    if data["disabled"]:
        draw.text((10, layout.chart_bottom + 32), f"off for this run: {data['disabled']}"[:130], fill=INK, font=font)
    return image


@dataclass(frozen=True)
class FitLayout:
    """Axes of the calibration plot: indicator change (x) against output change (y)."""

    x_max: float
    y_min: float
    y_max: float
    left: int = 70
    right: int = WIDTH - 20
    top: int = 20
    bottom: int = 420
    height: int = 500

    @classmethod
    def for_samples(cls, x: Sequence[float], y: Sequence[float]) -> FitLayout:
        x_max = max([*x, 1e-6]) * 1.05
        y_min, y_max = min([*y, 0.0]), max([*y, 1e-6]) * 1.05
        return cls(x_max, y_min, y_max)

    def point(self, x: float, y: float) -> tuple[int, int]:
        px = self.left + x / self.x_max * (self.right - self.left)
        py = self.bottom - (y - self.y_min) / (self.y_max - self.y_min) * (self.bottom - self.top)
        return round(px), round(py)

    def inside(self, point: tuple[int, int]) -> bool:
        return self.left <= point[0] <= self.right and self.top <= point[1] <= self.bottom


def render_fit(x: Sequence[float], y: Sequence[float], coefficients: Sequence[float], caption: Sequence[str]) -> Image.Image:
    """Scatter of the samples (blue) and the fitted polynomial over their range (red), with a caption (ASCII:
    Pillow's default font has no superscripts)."""
    layout = FitLayout.for_samples(x, y)
    image = Image.new("RGB", (WIDTH, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    draw.rectangle((layout.left, layout.top, layout.right, layout.bottom), outline=GRID)
    draw.text((layout.left, layout.bottom + 4), "0", fill=INK, font=font)
    draw.text((layout.right - 60, layout.bottom + 4), f"{layout.x_max:.3g}", fill=INK, font=font)
    draw.text((4, layout.top), f"{layout.y_max:.3g}", fill=INK, font=font)
    draw.text((4, layout.bottom - 12), f"{layout.y_min:.3g}", fill=INK, font=font)
    draw.text((layout.left + 200, layout.bottom + 4), "indicator change (x) vs output change (y)", fill=INK, font=font)
    for px, py in (layout.point(a, b) for a, b in zip(x, y, strict=True)):
        draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=SAMPLES)
    curve_x = np.linspace(min(x, default=0.0), max(x, default=layout.x_max), 300)  # where the fit has data
    curve = [layout.point(a, b) for a, b in zip(curve_x, np.polyval(coefficients, curve_x), strict=True)]
    for start, end in pairwise(curve):
        if layout.inside(start) and layout.inside(end):
            draw.line((start, end), fill=THRESHOLD, width=2)
    for i, line in enumerate(caption):
        draw.text((10, layout.bottom + 22 + 16 * i), line, fill=INK, font=font)
    return image
