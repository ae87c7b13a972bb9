"""The one place that talks to ComfyUI's patching API (keyed wrappers, replace patches).

A method installs three things on a clone of the MODEL:
- an OUTER_SAMPLE wrapper that starts a fresh run per sampling run (its state never
  outlives the run, so a second sampler, resolution or batch size starts clean);
- a DIFFUSION_MODEL wrapper that tells the run where each call sits (step, CFG branches);
- a `patches_replace` hook per block, which lets the run compute or skip each block.
Without a run (outside sampling, or disabled for this run) every hook passes through.

Models whose last blocks run on one joint sequence of text and image (Flux, HunyuanVideo) have
it laid out as their ComfyUI version decides (0.33 put the text first in HunyuanVideo): each run
reads the order from ComfyUI (`img_slice`) where it passes it, and verifies it once against the
streams the blocks before handed over; a sequence it cannot account for stops caching.

Under torch.compile the hooks' own frames and every caching action run eagerly (no decision
is traced into a graph, no guard depends on a run, a step or a CFG branch), while the blocks
they call still compile.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any, ClassVar, Protocol, TypeVar

import comfy.patcher_extension
import torch
from comfy.patcher_extension import WrappersMP

from ..caching.records import RunSummary
from ..caching.schedule import StepSchedule
from .family import BlockArgs, CallInfo, Family

logger = logging.getLogger(__name__)

RunBlock = Callable[[BlockArgs], BlockArgs]

# Whole-model caches of ComfyUI (EasyCache and LazyCache both keep their state under this key).
# Skipping on top of their skipped calls would compound two approximations, so ours steps aside.
OTHER_CACHES = {"easycache": "EasyCache / LazyCache"}

eager = torch.compiler.disable  # a frame that torch.compile never traces (nor anything it calls)
eager_frame = partial(torch.compiler.disable, recursive=False)  # skipped itself; what it calls still compiles


class CachePatch(Protocol):
    """What a method's node leaves in the MODEL's transformer_options, and how it starts each sampling run."""

    key: ClassVar[str]  # where it sits in transformer_options; also its wrappers' key
    run_key: ClassVar[str]  # where a sampling run's state sits while the run lasts
    method: ClassVar[str]  # its name in logs and warnings
    family: Family
    last_run: RunSummary | None  # what the latest sampling run did (or why the method was off)

    def start_run(self, guider: Any, sigmas: torch.Tensor) -> SamplingRun | None:
        """The run's state, or None when the method is off for this run."""
        ...


Patch = TypeVar("Patch", bound=CachePatch)


def installed(model: Any, patch_type: type[Patch]) -> Patch | None:
    """The patch of this type that a node put on this MODEL (ModelPatcher), if any."""
    patch = model.model_options.get("transformer_options", {}).get(patch_type.key)
    return patch if isinstance(patch, patch_type) else None


class LayoutMismatch(RuntimeError):
    """A joint sequence laid out in no order the pack can verify: caching it would corrupt the image."""


class SamplingRun:
    """Base of a method's per-run state: knows the schedule, the joint layout and the current call."""

    def __init__(self, family: Family, diffusion_model: torch.nn.Module, schedule: StepSchedule):
        self.family = family
        self.diffusion_model = diffusion_model
        self.schedule = schedule
        self.joint_position = family.joint_position(diffusion_model)
        self.text_first: bool | None = None  # order of the joint sequence, once verified in this run
        self.failure: str | None = None  # why caching stopped in this run
        self._current = threading.local()  # parallel branch calls (multi-GPU) each have their own

    @property
    def call(self) -> CallInfo | None:
        """The call this thread is in, None outside one."""
        return getattr(self._current, "call", None)

    @call.setter
    def call(self, call: CallInfo | None) -> None:
        self._current.call = call

    def begin_call(
        self, transformer_options: dict, timestep: torch.Tensor | None, has_control: bool, diffusion_model: Any
    ) -> None:
        """Where this call sits; `has_control`: the call carries ControlNet residuals."""
        sigma = float(transformer_options["sigmas"][0])
        keys = transformer_options.get("uuids") or transformer_options.get("cond_or_uncond") or [0]
        self.call = CallInfo(
            keys=tuple(keys),
            step=self.schedule.step_index(sigma),
            in_window=self.schedule.in_window(sigma),
            timestep=timestep,
            between_blocks=has_control or bool(transformer_options.get("patches", {}).get("double_block")),
            diffusion_model=diffusion_model if diffusion_model is not None else self.diffusion_model,
            sigma=sigma,
        )

    @eager_frame
    def block(self, position: int, last: int, kind: str, args: BlockArgs, run_block: RunBlock) -> BlockArgs:
        """One block under this run: what every method needs to know of the streams, then its `on_block`."""
        call = self.call
        if position == 0:
            call.img_len = args["img"].shape[1]
            call.txt_len = args["txt"].shape[1] if kind in self.family.text_stream_kinds else 0
        if position == self.joint_position and self.text_first is None:
            self.guarded(self._verify_layout, args)
            if self.failed:
                return run_block(args)
        out = self.on_block(position, last, kind, args, run_block)
        if self.joint_position is not None and position == self.joint_position - 1 and self.text_first is None:
            call.last_text_stage = (out["img"], out["txt"])  # what ComfyUI joins next (control adds in place)
        return out

    def _verify_layout(self, args: BlockArgs) -> None:
        """Find the joint sequence's order: ComfyUI's `img_slice` where given, checked against the streams."""
        img, txt = self.call.last_text_stage
        joint = args["img"]
        img_slice = (args.get("transformer_options") or {}).get("img_slice")
        orders = (True, False) if img_slice is None else (img_slice[0] > 0,)
        for text_first in orders:
            expected_slice = (txt.shape[1], joint.shape[1]) if text_first else (0, img.shape[1])
            if img_slice is not None and tuple(img_slice) != expected_slice:
                continue
            expected = torch.cat((txt, img) if text_first else (img, txt), dim=1)
            if expected.shape == joint.shape and torch.equal(expected, joint):
                self.text_first = text_first
                return
        told = f"at ComfyUI's img_slice {list(img_slice)}" if img_slice is not None else "in either order"
        raise LayoutMismatch(
            f"{self.family.name}: the first joint block's input is not the image and text streams "
            f"of the block before it {told}"
        )

    def _joined_text_first(self) -> bool:
        if self.text_first is None:
            raise LayoutMismatch(f"{self.family.name}: the joint sequence's order is not verified in this run")
        return self.text_first

    def enter_stack(self, args: BlockArgs) -> None:
        """At block 0: keep the image stream entering the block stack, which every method measures from."""
        self.call.stack_input = args["img"].clone()  # blocks may update their input in place

    def stack_residual(self, kind: str, out: BlockArgs) -> torch.Tensor:
        """What the blocks since `enter_stack` added to the image stream (its image tokens, in the model's dtype)."""
        residual = self.image_tokens(kind, out["img"]) - self.call.stack_input
        self.call.stack_input = None
        return residual

    def image_tokens(self, kind: str, hidden: torch.Tensor) -> torch.Tensor:
        """The image part of a block's "img" output (joint blocks carry text and image)."""
        if self.joint_position is None or kind in self.family.text_stream_kinds:
            return hidden
        start = self.call.txt_len if self._joined_text_first() else 0
        return hidden[:, start : start + self.call.img_len]

    def joint(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """The sequence joint blocks run on, in the order this run verified."""
        return torch.cat((txt, img) if self._joined_text_first() else (img, txt), dim=1)

    def split(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(img, txt) of a joint sequence: the inverse of `joint`."""
        call = self.call
        if self._joined_text_first():
            return joint[:, call.txt_len :], joint[:, : call.txt_len]
        return joint[:, : call.img_len], joint[:, call.img_len :]

    def on_block(self, position: int, last: int, kind: str, args: BlockArgs, run_block: RunBlock) -> BlockArgs:
        raise NotImplementedError

    def end_call(self, output: torch.Tensor) -> None:
        """The diffusion model's output of the current call (calibration measures it)."""

    def finish(self) -> None:
        """Called once when the sampling run ends (also on error or interrupt)."""

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def fail(self, error: BaseException) -> None:
        """Stop caching for the rest of the run: every block computes from here on."""
        if not self.failed:
            self.failure = f"{type(error).__name__}: {error}"
            logger.warning("dit-cache: caching stopped for this run, steps now compute: %s", self.failure)

    @eager
    def guarded(self, action: Callable[..., Any], *args: Any) -> Any:
        """Run one caching action (decide, store, approximate, apply) outside any compiled graph.

        On an error the run stops caching (logged once) and None is returned: the caller then
        computes, so a failure in the cache never reaches the image.
        """
        if self.failed:
            return None
        try:
            return action(*args)
        except Exception as error:
            self.fail(error)
            return None


@eager
def identity(args: BlockArgs) -> BlockArgs:
    """What a skipped block returns: its streams unchanged."""
    return {k: args[k] for k in ("img", "txt") if k in args}


class BlockHook:
    """`patches_replace` entry for one block: hands the block to the active run, if any.

    A replace patch that another pack set on the same block before ours keeps running
    whenever the block computes.
    """

    def __init__(self, patch_key: str, run_key: str, position: int, last: int, kind: str, previous: Callable | None):
        while isinstance(previous, BlockHook):
            previous = previous.previous  # one of our methods per model: the one applied last
        self.patch_key = patch_key
        self.run_key = run_key
        self.position = position
        self.last = last
        self.kind = kind
        self.previous = previous

    @eager_frame
    def __call__(self, args: BlockArgs, extra: dict) -> BlockArgs:
        # ComfyUI's own block function when no other pack replaced this block: what compiles then
        # is exactly the frame that runs without us.
        run_block = extra["original_block"] if self.previous is None else partial(_run_previous, self.previous, extra)
        run = (args.get("transformer_options") or {}).get(self.run_key)
        if run is None or run.failed or run.call is None:
            return run_block(args)
        return run.block(self.position, self.last, self.kind, args, run_block)


def _run_previous(previous: Callable, extra: dict, args: BlockArgs) -> BlockArgs:
    return previous(args, extra)


@lru_cache(maxsize=64)
def _signature(function: Callable) -> inspect.Signature:
    return inspect.signature(function)


def call_arguments(original: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The diffusion model's arguments by name, whatever mix of positions and keywords it got."""
    if inspect.isfunction(original):
        signature = _signature(original)
        bound = signature.bind(*args, **kwargs)
    else:  # a bound method, or a callable object patched in its place
        function = original.__func__ if inspect.ismethod(original) else type(original).__call__
        owner = original.__self__ if inspect.ismethod(original) else original
        signature = _signature(function)
        bound = signature.bind(owner, *args, **kwargs)
    named = dict(bound.arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(named.pop(name, {}))
    return named


def _transformer_options(args: tuple, kwargs: dict) -> dict:
    """Found without binding: ComfyUI passes them by keyword, or last among the positionals."""
    options = kwargs.get("transformer_options")
    if isinstance(options, dict):
        return options
    return next((a for a in reversed(args) if isinstance(a, dict) and "sigmas" in a), {})


def _begin_call(run: SamplingRun, executor: Any, args: tuple, kwargs: dict) -> None:
    named = call_arguments(executor.original, args, kwargs)  # a newer ComfyUI's signature may fail
    timestep = named.get("timestep", named.get("timesteps"))
    diffusion_model = getattr(executor, "class_obj", None)  # this call's instance (multi-GPU: a clone)
    run.begin_call(named["transformer_options"], timestep, named.get("control") is not None, diffusion_model)


_calling = threading.local()


def called_model() -> torch.nn.Module | None:
    """The diffusion model instance this thread is inside a call of (multi-GPU runs clones on other devices)."""
    return getattr(_calling, "model", None)


@eager_frame
def _diffusion_model_wrapper(run_key: str, executor: Any, *args: Any, **kwargs: Any) -> Any:
    outer = called_model()
    _calling.model = getattr(executor, "class_obj", None)
    try:
        run = _transformer_options(args, kwargs).get(run_key)
        if run is None or run.failed:
            return executor(*args, **kwargs)
        return _run_call(run, executor, args, kwargs)
    finally:
        _calling.model = outer


@eager_frame
def _run_call(run: SamplingRun, executor: Any, args: tuple, kwargs: dict) -> Any:
    run.guarded(_begin_call, run, executor, args, kwargs)
    try:
        output = executor(*args, **kwargs)
        run.guarded(run.end_call, output)
        return output
    finally:
        run.call = None  # block hooks outside this call must never act on it


def _outer_sample_wrapper(patch_key: str, executor: Any, *args: Any, **kwargs: Any) -> Any:
    guider = executor.class_obj
    patch = guider.model_options.get("transformer_options", {}).get(patch_key)
    sigmas = args[3] if len(args) > 3 else kwargs.get("sigmas")
    try:
        run = _start_run(patch, guider, sigmas) if patch is not None else None
    except Exception as error:  # never let the cache stop a render: sample uncached
        logger.warning("dit-cache: cannot start caching for this run, sampling without it: %r", error)
        run = None
    if run is None:
        return executor(*args, **kwargs)
    original_options = guider.model_options
    guider.model_options = comfy.patcher_extension.copy_nested_dicts(original_options)
    guider.model_options["transformer_options"][patch.run_key] = run
    try:
        return executor(*args, **kwargs)
    finally:
        guider.model_options = original_options
        run.finish()


def _start_run(patch: CachePatch, guider: Any, sigmas: torch.Tensor) -> SamplingRun | None:
    """The method's run, or None (with one warning) where caching could not be exact about what it skips."""
    reason = _conflict(patch, guider)
    if reason is not None:
        logger.warning("%s is off for this run: %s", patch.method, reason)
        patch.last_run = RunSummary(len(sigmas) - 1, disabled=reason)
        return None
    return patch.start_run(guider, sigmas)


def _conflict(patch: CachePatch, guider: Any) -> str | None:
    """Why this run must not cache: another whole-model cache, or a block whose hook is no longer ours."""
    options = guider.model_options.get("transformer_options", {})
    others = [name for key, name in OTHER_CACHES.items() if key in options]
    if others:
        return f"{others[0]} is also applied to this model (use one cache per model)"
    hooks = options.get("patches_replace", {}).get("dit", {})
    diffusion_model = guider.model_patcher.get_model_object("diffusion_model")
    for kind, index in patch.family.block_keys(diffusion_model):
        hook = hooks.get((kind, index))
        if not isinstance(hook, BlockHook) or hook.patch_key != patch.key:
            # A skipped step would still run that block, on a state it was never meant for.
            return f"{kind} {index} was replaced by a node applied after {patch.method} (apply {patch.method} last)"
    return None


def _replace_earlier(patched: Any, options: dict, patch: CachePatch) -> None:
    """One of our methods per model: applying one removes any applied before it, with one warning.

    Two methods on one model would skip on top of each other's skipped blocks.
    """
    hooks = options.get("patches_replace", {}).get("dit", {}).values()
    for key in sorted({hook.patch_key for hook in hooks if isinstance(hook, BlockHook)}):
        earlier = options.pop(key, None)
        logger.warning(
            "dit-cache: %s replaces the %s applied earlier to this model (one caching method per model)",
            patch.method,
            getattr(earlier, "method", key),
        )
        for wrapper_type in (WrappersMP.OUTER_SAMPLE, WrappersMP.DIFFUSION_MODEL):
            patched.remove_wrappers_with_key(wrapper_type, key)


def install(model: Any, patch: CachePatch) -> Any:
    """A clone of `model` with `patch` (a method's holder) wired into sampling."""
    family = patch.family
    patched = model.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    _replace_earlier(patched, options, patch)
    options[patch.key] = patch
    for wrapper_type, wrapper in (
        (WrappersMP.OUTER_SAMPLE, partial(_outer_sample_wrapper, patch.key)),
        (WrappersMP.DIFFUSION_MODEL, partial(_diffusion_model_wrapper, patch.run_key)),
    ):
        patched.remove_wrappers_with_key(wrapper_type, patch.key)
        patched.add_wrapper_with_key(wrapper_type, patch.key, wrapper)

    diffusion_model = patched.get_model_object("diffusion_model")
    keys = family.block_keys(diffusion_model)
    existing = options.get("patches_replace", {}).get("dit", {})
    for position, (kind, index) in enumerate(keys):
        hook = BlockHook(patch.key, patch.run_key, position, len(keys) - 1, kind, existing.get((kind, index)))
        patched.set_model_patch_replace(hook, "dit", kind, index)
    if family.object_patches is not None:
        current = partial(_model_object, patched)
        for name, replacement in family.object_patches(diffusion_model, current).items():
            patched.add_object_patch(f"diffusion_model.{name}", replacement)
    return patched


def _model_object(patched: Any, name: str) -> Any:
    """What `diffusion_model.<name>` is on this MODEL now: an earlier object patch, or the model's own."""
    return patched.get_model_object(f"diffusion_model.{name}")
