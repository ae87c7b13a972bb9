"""One sampling run of a method, and which earlier model calls a call may be compared with.

ComfyUI may call the diffusion model several times per step: once per CFG branch (or one call
for several), once per context window, again for a guidance node's extra pass (skip-layer
guidance replaces some blocks; LTX-2's guidance nodes change per-call options), on several
devices in threads. Each branch of a call gets an identity, read from what ComfyUI passes with
the call: its cond, its context window, and everything else in its `transformer_options` and the
model instance it runs on. Every piece of state a method keeps is kept per identity, so a call
is compared with, and reuses from, earlier calls of its own kind only; a call whose identity
has no earlier call computes. Nothing here names a guidance node: an extra pass is told apart
by what it changes, so the next one ComfyUI adds is kept apart before anyone writes code for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import torch

from ..caching.records import RunSummary, computed_after_all
from ..caching.schedule import StepSchedule
from .family import BlockArgs, BlockKey, CallInfo, Family
from .joint_layout import JointLayout

logger = logging.getLogger(__name__)

RunBlock = Callable[[BlockArgs], BlockArgs]

# Options the run reads itself (a branch's cond, the step, the window): the rest tell a call's kind.
_READ_BY_THE_RUN = frozenset({"uuids", "cond_or_uncond", "sigmas", "context_window"})

eager = torch.compiler.disable  # a frame that torch.compile never traces (nor anything it calls)
eager_frame = partial(torch.compiler.disable, recursive=False)  # skipped itself; what it calls still compiles


@dataclass(frozen=True)
class CallIdentity:
    """One branch of one kind of model call: state is kept, and compared, per identity.

    cond: the branch's place in the conds the sampler evaluates (ComfyUI's `cond_or_uncond`: 0 the
    positive, 1 the negative of a CFG sampler); frames: the context window's latent frames (None: the
    whole latent); kind: 0 for the first kind of call the run met, 1, 2, ... for calls that differ from
    it in what their blocks compute (an extra pass, another device).
    """

    index: int  # in the order the run met it
    cond: int
    frames: tuple[int, ...] | None = None
    kind: int = 0

    def label(self) -> str:
        """How the Cache report names it, e.g. "cond 1, frames 4-8, kind 1"."""
        parts = [f"cond {self.cond}"]
        if self.frames is not None:
            parts.append(f"frames {self.frames[0]}-{self.frames[-1]}")
        if self.kind:
            parts.append(f"kind {self.kind}")
        return ", ".join(parts)


class UnknownCall(ValueError):
    """ComfyUI passed something with this call that the pack cannot tell a kind of call by."""


class _Same:
    """An object compared by identity, held so that its id cannot be reused while the run lasts."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self) -> int:
        return id(self.obj)


def _fingerprint(value: Any) -> Hashable:
    """What a per-call option is, for telling kinds of call apart: plain values by value,
    containers by their contents, tensors by shape, dtype and device, anything else by identity."""
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.device, torch.dtype)):
        return value
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device)
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(k), _fingerprint(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_fingerprint(v) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_fingerprint(v) for v in value))
    return _Same(value)


def _window_frames(options: dict) -> tuple[tuple[int, ...], Hashable] | None:
    """(frames, everything else that places the window) of a context-window call; None outside windows."""
    window = options.get("context_window")
    if window is None:
        return None
    try:
        frames = tuple(int(i) for i in window.index_list)
        # 0.33: a frame before the window (causal fix), and each other modality's frames (audio).
        anchor = getattr(window, "causal_anchor_index", None)
        modalities = getattr(window, "modality_windows", None) or {}
        others = tuple(sorted((k, tuple(int(i) for i in w.index_list)) for k, w in modalities.items()))
    except (AttributeError, TypeError, ValueError) as error:
        raise UnknownCall(f"a context window of type {type(window).__name__} ({error})") from None
    return frames, (anchor, others)


class CallKinds:
    """The identities one run has met, and when each was last called.

    An identity not called in this step or the one before is retired: its state is dropped and its
    next call computes, so passes that stop (a guidance range ends) or windows that move hold nothing.
    """

    def __init__(self) -> None:
        self._identities: dict[Hashable, CallIdentity] = {}
        self._kinds: dict[Hashable, int] = {}
        self._last_step: dict[CallIdentity, int] = {}
        self._lock = threading.Lock()  # multi-GPU threads meet identities at once

    def identify(self, options: dict, diffusion_model: Any, step: int) -> tuple[CallIdentity, ...]:
        """The identity of each branch of this call (in batch order); UnknownCall where none can be told."""
        places = options.get("cond_or_uncond") or [0]
        conds = options.get("uuids") or places  # a cond's uuid tells apart area conds of one place
        window = _window_frames(options)
        kind = (
            tuple(sorted((repr(k), _fingerprint(v)) for k, v in options.items() if k not in _READ_BY_THE_RUN)),
            _Same(diffusion_model),
        )
        with self._lock:
            kind_index = self._kinds.setdefault(kind, len(self._kinds))
            identities = []
            for cond, place in zip(conds, places, strict=True):
                key = (cond, window, kind_index)
                if key not in self._identities:
                    frames = window[0] if window is not None else None
                    self._identities[key] = CallIdentity(len(self._identities), int(place), frames, kind_index)
                identity = self._identities[key]
                self._last_step[identity] = step
                identities.append(identity)
        return tuple(identities)

    def retire(self, step: int) -> list[CallIdentity]:
        """Identities last called before the previous step: what the methods drop now."""
        with self._lock:
            stale = [identity for identity, last in self._last_step.items() if last < step - 1]
            for identity in stale:
                del self._last_step[identity]
        return stale

    def describe(self) -> str:
        """The calls beyond CFG branches, for a run's summary line: "4 context windows, 2 kinds of call" ('' if none)."""
        windows = len({window for _, window, _ in self._identities} - {None})
        parts = [f"{windows} context windows"] if windows else []
        if len(self._kinds) > 1:
            parts.append(f"{len(self._kinds)} kinds of call")
        return ", ".join(parts)


class SamplingRun:
    """Base of a method's per-run state: the schedule, the identities of calls, the joint layout and
    the current call (per thread: ComfyUI's multi-GPU path runs calls in parallel threads)."""

    call_type: type[CallInfo] = CallInfo  # a method's own per-call fields

    def __init__(self, family: Family, diffusion_model: torch.nn.Module, schedule: StepSchedule):
        self.family = family
        self.diffusion_model = diffusion_model
        self.schedule = schedule
        self.kinds = CallKinds()
        self.joint_position = family.joint_position(diffusion_model)
        self.layout = JointLayout(family.name)
        self.block_hooks: dict[BlockKey, Callable] = {}  # ours on each block, as the run found them at its start
        self.failure: str | None = None  # why caching stopped in this run
        self.unknown: str | None = None  # a kind of call this run could not identify (those calls computed)
        self._current = threading.local()

    @property
    def call(self) -> CallInfo | None:
        """The call this thread is in, None outside one."""
        return getattr(self._current, "call", None)

    @call.setter
    def call(self, call: CallInfo | None) -> None:
        self._current.call = call

    def begin_call(
        self, options: dict, timestep: torch.Tensor | None, has_control: bool, diffusion_model: Any
    ) -> None:
        """Where this call sits and what it is; `has_control`: it carries ControlNet residuals.

        A call of a kind the run cannot identify runs untouched (no state is read or written), with
        one warning per run.
        """
        diffusion_model = diffusion_model if diffusion_model is not None else self.diffusion_model
        sigma = float(options["sigmas"][0])
        step = self.schedule.step_index(sigma)
        try:
            keys = self.kinds.identify(options, diffusion_model, step)
        except UnknownCall as error:
            if self.unknown is None:
                self.unknown = str(error)
                logger.warning("dit-cache: calls with %s compute untouched in this run", self.unknown)
            self.call = None
            return
        self.forget(self.kinds.retire(step))
        self.call = self.call_type(
            keys=keys,
            step=step,
            in_window=self.schedule.in_window(sigma),
            timestep=timestep,
            between_blocks=has_control or bool(options.get("patches", {}).get("double_block")),
            diffusion_model=diffusion_model,
            sigma=sigma,
        )

    def forget(self, identities: Iterable[CallIdentity]) -> None:
        """Drop what the method keeps for these identities (their next call computes)."""

    @eager_frame
    def block(self, position: int, last: int, kind: str, args: BlockArgs, run_block: RunBlock) -> BlockArgs:
        """One block under this run: what every method needs to know of the streams, then its `on_block`."""
        call = self.call
        if position == 0:
            call.img_len = args["img"].shape[1]
            call.txt_len = args["txt"].shape[1] if kind in self.family.text_stream_kinds else 0
        if position == self.joint_position and self.layout.text_first is None:
            self.guarded(self.layout.verify, *call.last_text_stage, args)
            if self.failed:
                return run_block(args)
        out = self.on_block(position, last, kind, args, run_block)
        if self.joint_position is not None and position == self.joint_position - 1 and self.layout.text_first is None:
            call.last_text_stage = (out["img"], out["txt"])  # what ComfyUI joins next (control adds in place)
        return out

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
        return self.layout.image_part(hidden, self.call.img_len, self.call.txt_len)

    def joint(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        return self.layout.join(img, txt)

    def split(self, joint: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layout.split(joint, self.call.img_len, self.call.txt_len)

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


class CachingRun(SamplingRun):
    """A run of a method that skips work (TeaCache, Cache-DiT): its decisions live in `self.run`
    (`caching.teacache.TeaCacheRun`, `caching.dbcache.DBCacheRun`), per call identity."""

    def __init__(self, patch: Any, diffusion_model: torch.nn.Module, schedule: StepSchedule):
        super().__init__(patch.family, diffusion_model, schedule)
        self.patch = patch
        self.run = self.new_decisions()

    def new_decisions(self) -> Any:
        raise NotImplementedError

    def forget(self, identities: Iterable[CallIdentity]) -> None:
        for identity in identities:
            self.run.branches.pop(identity, None)

    def replayed_or_none(self, replay: Callable[..., BlockArgs], *args: Any) -> BlockArgs | None:
        """A cached call's replayed blocks; on a failure (None) the call is recorded as computed and computes."""
        replayed = self.guarded(replay, *args)
        if replayed is None:
            computed_after_all(self.run.records, self.call.keys)
        return replayed

    def finish(self) -> None:
        unknown = f"calls with {self.unknown} computed untouched" if self.unknown else None
        summary = replace(self.run.summary(), disabled=self.failure or unknown)
        self.patch.last_run = summary
        kinds = self.kinds.describe()
        self.run = self.new_decisions()  # drop cached tensors
        self.kinds = CallKinds()  # and what the identities held on to
        if summary.calls == 0 and unknown is None:
            logger.warning(
                "%s [%s]: the model's block loop was never reached, so nothing was cached "
                "(a ComfyUI version whose %s forward this pack does not know?)",
                self.patch.method,
                self.family.name,
                type(self.diffusion_model).__name__,
            )
            return
        if summary.calls == 0:
            return  # the unknown calls' warning said why
        logger.info(
            "%s [%s, %s]: %s%s (%s)",
            self.patch.method,
            self.family.name,
            self.patch.config.tag(),
            self.describe(summary),
            f"; calls in {kinds}" if kinds else "",
            self.patch.member,
        )

    def describe(self, summary: RunSummary) -> str:
        """What the run did, for its summary line."""
        raise NotImplementedError
