"""The nodes' inputs as ComfyUI widgets (V3 schema), built from the tables in caching/node_inputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from comfy_api.latest import io

from ..caching.node_inputs import Input
from .presets import user_choices


def widget(spec: Input) -> io.Input:
    """One input as the widget ComfyUI shows; a calibrated combo lists the presets on disk now."""
    shown = _widget(spec)
    if spec.advanced:  # a keyword of ComfyUI 0.33's inputs only; extra_dict reaches the editor on every version
        shown.extra_dict["advanced"] = True
    return shown


def _widget(spec: Input) -> io.Input:
    common = {"tooltip": spec.tooltip, "optional": spec.optional, "default": spec.default}
    if spec.choices:
        return io.Combo.Input(spec.name, options=[*spec.choices, *(user_choices() if spec.calibrated else [])], **common)
    if isinstance(spec.default, bool):
        return io.Boolean.Input(spec.name, **common)
    if isinstance(spec.default, str):
        return io.String.Input(spec.name, **common)
    low = spec.low if spec.off is None else min(spec.low, spec.off)
    if isinstance(spec.default, int):
        return io.Int.Input(spec.name, min=int(low), max=int(spec.high), **common)
    return io.Float.Input(spec.name, min=low, max=spec.high, step=spec.step, **common)


def widgets(specs: Sequence[Input]) -> list[io.Input]:
    return [widget(spec) for spec in specs]


def validation(check: Callable[[], object]) -> bool | str:
    """What a node's validate_inputs answers: True, or the error that names the input."""
    try:
        check()
    except (TypeError, ValueError) as error:
        return str(error)
    return True
