"""The one place that talks to ComfyUI's patching API (keyed wrappers, replace patches).

A method installs three things on a clone of the MODEL:
- an OUTER_SAMPLE wrapper that starts a fresh run per sampling run (its state never
  outlives the run, so a second sampler, resolution or batch size starts clean);
- a DIFFUSION_MODEL wrapper that tells the run where each call sits and what it is
  (`sampling_run`: step, CFG branches, context window, kind of call);
- a `patches_replace` hook per block, which lets the run compute or skip each block.
Without a run (outside sampling, or disabled for this run) every hook passes through.

A call whose own options replace some of the blocks (a guidance node's extra pass, such as
skip-layer guidance) runs with our hook around each replacement: the run sees every block, and
the replacement runs whenever its block computes.

Under torch.compile the hooks' own frames and every caching action run eagerly (no decision
is traced into a graph, no guard depends on a run, a step or a CFG branch), while the blocks
they call still compile.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any, ClassVar, TypeVar

import comfy.patcher_extension
import torch
from comfy.patcher_extension import WrappersMP

from ..caching.records import RunSummary
from .family import BlockArgs, Family
from .sampling_run import SamplingRun, eager, eager_frame

logger = logging.getLogger(__name__)

# Whole-model caches of ComfyUI (EasyCache and LazyCache both keep their state under this key).
# Skipping on top of their skipped calls would compound two approximations, so ours steps aside.
OTHER_CACHES = {"easycache": "EasyCache / LazyCache"}


@dataclass
class CachePatch:
    """What a method's node leaves in the MODEL's transformer_options: its settings, and how it
    starts each sampling run; `last_run` tells what the latest run did (or why the method was off)."""

    family: Family
    member: str  # the family member it was applied to, as logs and the Cache report name it
    last_run: RunSummary | None = field(default=None, compare=False, kw_only=True)

    key: ClassVar[str]  # where it sits in transformer_options; also its wrappers' key
    run_key: ClassVar[str]  # where a sampling run's state sits while the run lasts
    method: ClassVar[str]  # its name in logs and warnings

    def start_run(self, guider: Any, sigmas: torch.Tensor) -> SamplingRun | None:
        """The run's state, or None when the method is off for this run."""
        raise NotImplementedError


Patch = TypeVar("Patch", bound=CachePatch)


def installed(model: Any, patch_type: type[Patch]) -> Patch | None:
    """The patch of this type that a node put on this MODEL (ModelPatcher), if any."""
    patch = model.model_options.get("transformer_options", {}).get(patch_type.key)
    return patch if isinstance(patch, patch_type) else None


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

    def around(self, replacement: Callable | None) -> BlockHook:
        """This hook running `replacement` (None: ComfyUI's own block) whenever the block computes."""
        return BlockHook(self.patch_key, self.run_key, self.position, self.last, self.kind, replacement)


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
        if run.call is not None:
            args, kwargs = _hooks_around_replacements(run, args, kwargs)
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


@eager
def _hooks_around_replacements(run: SamplingRun, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call's arguments, with our hook around each block replacement its own options carry.

    An extra pass (skip-layer guidance: some blocks return their input) sets them per call, in
    place of our hooks; the run then still sees every block, and the extra pass is a kind of call
    of its own (`sampling_run.CallKinds`), so its cached blocks are its own too.
    """
    options = _transformer_options(args, kwargs)
    replaces = options.get("patches_replace", {})
    dit = replaces.get("dit", {})
    around = {key: hook.around(dit.get(key)) for key, hook in run.block_hooks.items() if dit.get(key) is not hook}
    if not around:
        return args, kwargs
    ours = {**options, "patches_replace": {**replaces, "dit": {**dit, **around}}}
    if kwargs.get("transformer_options") is options:
        return args, {**kwargs, "transformer_options": ours}
    return tuple(ours if a is options else a for a in args), kwargs


def _start_run(patch: CachePatch, guider: Any, sigmas: torch.Tensor) -> SamplingRun | None:
    """The method's run, or None (with one warning) where caching could not be exact about what it skips."""
    reason = _conflict(patch, guider)
    if reason is not None:
        logger.warning("%s is off for this run: %s", patch.method, reason)
        patch.last_run = RunSummary(len(sigmas) - 1, disabled=reason)
        return None
    run = patch.start_run(guider, sigmas)
    if run is not None:
        hooks = guider.model_options["transformer_options"]["patches_replace"]["dit"]
        diffusion_model = guider.model_patcher.get_model_object("diffusion_model")
        run.block_hooks = {key: hooks[key] for key in patch.family.block_keys(diffusion_model)}
    return run


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
