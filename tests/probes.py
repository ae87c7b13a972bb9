"""Test-side observation of a real model run, through torch module hooks only.

The probes see what ComfyUI's own modules receive and return, independently of the pack:
the first block's modulated input (what TeaCache claims to measure), the block stack's
input and output (what a skipped step must reproduce from its cache), and whether the
last block ran at all.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import torch


@dataclass
class CallTrace:
    modulated: list[torch.Tensor] = field(default_factory=list)
    stack_in: list[torch.Tensor] = field(default_factory=list)
    stack_out: torch.Tensor | None = None
    last_block_ran: bool = False


def _first_arg(index: int = 0) -> Callable:
    return lambda args, kwargs: args[index]


@dataclass(frozen=True)
class Layout:
    """Where one family's transformer lives in ComfyUI's module tree, as the tests observe it.

    blocks: the block lists of the cached stack, in execution order (Z-Image's refiners run before it);
    modulated: TeaCache's indicator, as (module, which of its inputs); stack_in / stack_out: what enters
    the stack (after these modules) and leaves it (into this module); last_block: a module entered only
    when the last block really runs; first_block_image: which output of block 0 is the image stream
    (None: the output itself).
    """

    blocks: tuple[str, ...]
    modulated: tuple[str, Callable]
    stack_in: tuple[tuple[str, Callable | None], ...]
    stack_out: tuple[str, Callable]
    last_block: str
    first_block_image: int | None


_DOUBLE_THEN_SINGLE = Layout(
    blocks=("double_blocks", "single_blocks"),
    modulated=("double_blocks.0.img_attn.qkv", _first_arg()),
    stack_in=(("img_in", None),),
    stack_out=("final_layer", _first_arg()),
    last_block="single_blocks.-1",
    first_block_image=0,
)

LAYOUTS: dict[str, Layout] = {
    "flux": _DOUBLE_THEN_SINGLE,
    "hunyuan_video": _DOUBLE_THEN_SINGLE,
    "qwen_image": Layout(
        blocks=("transformer_blocks",),
        modulated=("transformer_blocks.0.attn", lambda args, kwargs: kwargs["hidden_states"]),
        stack_in=(("img_in", None),),
        stack_out=("norm_out", _first_arg()),
        last_block="transformer_blocks.-1",
        first_block_image=1,
    ),
    "wan": Layout(
        blocks=("blocks",),
        modulated=("head", _first_arg(1)),  # the time embedding e that the head receives
        stack_in=(("patch_embedding", lambda out: out.flatten(2).transpose(1, 2)),),
        stack_out=("head", _first_arg()),
        last_block="blocks.-1",
        first_block_image=None,
    ),
    "z_image": Layout(
        blocks=("layers",),
        modulated=("layers.0.attention", _first_arg()),
        stack_in=(("context_refiner.-1", None), ("noise_refiner.-1", None)),
        stack_out=("final_layer", _first_arg()),
        # The layer module itself is entered even when skipped (its forward is the pack's object patch).
        last_block="layers.-1.attention",
        first_block_image=None,
    ),
}


def _module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    module = root
    for part in path.split("."):
        module = module[int(part)] if part.lstrip("-").isdigit() else getattr(module, part)
    return module


class ModelProbe:
    """Records one CallTrace per diffusion-model call while active (a context manager)."""

    def __init__(self, model_patcher: Any, family: str):
        self.dm = model_patcher.model.diffusion_model
        self.layout = LAYOUTS[family]
        self.calls: list[CallTrace] = []
        self._handles: list[Any] = []

    def __enter__(self) -> Self:
        def new_call(module: Any, args: Any) -> None:
            self.calls.append(CallTrace())

        self._handles.append(self.dm.register_forward_pre_hook(new_call))
        path, pick = self.layout.modulated
        self._pre(path, lambda a, k, pick=pick: self.calls[-1].modulated.append(pick(a, k).detach().clone()))
        for path, transform in self.layout.stack_in:
            self._post(path, lambda out, t=transform: self.calls[-1].stack_in.append((t(out) if t else out).detach().clone()))
        path, pick = self.layout.stack_out
        self._pre(path, lambda a, k, pick=pick: setattr(self.calls[-1], "stack_out", pick(a, k).detach().clone()))
        self._pre(self.layout.last_block, lambda a, k: setattr(self.calls[-1], "last_block_ran", True))
        return self

    def _pre(self, path: str, record: Callable) -> None:
        hook = lambda module, args, kwargs: record(args, kwargs)
        self._handles.append(_module(self.dm, path).register_forward_pre_hook(hook, with_kwargs=True))

    def _post(self, path: str, record: Callable) -> None:
        self._handles.append(_module(self.dm, path).register_forward_hook(lambda module, args, out: record(out)))

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def stack_input(self, call: CallTrace) -> torch.Tensor:
        return torch.cat(call.stack_in, dim=1) if len(call.stack_in) > 1 else call.stack_in[0]


def relative_l1(previous: torch.Tensor, current: torch.Tensor) -> float:
    """mean|cur - prev| / mean|prev| in float64 numpy: an independent recomputation."""
    p = previous.double().numpy()
    c = current.double().numpy()
    return float(np.abs(c - p).mean() / np.abs(p).mean())


def replay_rule(records: list[Any], thresh: float, coefficients: tuple[float, ...], total_steps: int,
                warmup: int = 1, force_last: bool = True, in_window: Callable[[int], bool] = lambda step: True) -> list[bool]:
    """TeaCache's rule re-derived from the recorded raw changes: which calls should compute.

    Per branch: accumulate poly(change); compute on warm-up / last / out-of-window steps, on a
    branch's first call, or when the sum reaches the threshold; a call with several branches
    computes when any must, and then every branch in it restarts from zero.
    """
    poly = np.poly1d(coefficients)
    accumulated: dict[Any, float] = {}
    decisions = []
    for record in records:
        forced = record.step < warmup or (force_last and record.step >= total_steps - 1) or not in_window(record.step)
        compute = forced or thresh <= 0
        for key, change in zip(record.branches, record.rel_l1):
            if change is None or key not in accumulated:
                compute = True
                accumulated[key] = 0.0
                continue
            accumulated[key] += float(poly(change))
            compute = compute or accumulated[key] >= thresh
        if compute:
            for key in record.branches:
                accumulated[key] = 0.0
        decisions.append(compute)
    return decisions
