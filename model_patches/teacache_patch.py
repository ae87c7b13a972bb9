"""Apply TeaCache to a ComfyUI MODEL: the run that decides per call, and the installer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..caching.records import RunSummary
from ..caching.schedule import StepSchedule
from ..caching.teacache import TeaCacheConfig, TeaCacheRun
from ..caching.teacache_presets import TeaCachePreset
from .family import BlockArgs, CallInfo, Family
from .sampling_hooks import CachePatch, eager_frame, identity, install
from .sampling_run import CachingRun, RunBlock

logger = logging.getLogger(__name__)


@dataclass
class TeaCachePatch(CachePatch):
    """The node's settings, kept in the MODEL's transformer_options."""

    config: TeaCacheConfig
    preset: TeaCachePreset

    key = "dit_cache.teacache"
    run_key = "dit_cache.teacache.run"
    method = "TeaCache"

    def start_run(self, guider: Any, sigmas: torch.Tensor) -> TeaCacheSampling | None:
        cfg = _active_cfg(guider)
        if self.family.cfg_shares_state and cfg is not None:
            reason = (
                f"CFG is active (cfg={cfg:g}) and TeaCache keeps one state for both CFG branches on "
                f"{self.family.name}: TeaCache is off for this run (set cfg to 1 to use it)"
            )
            logger.info("TeaCache: %s", reason)
            self.last_run = RunSummary(len(sigmas) - 1, disabled=reason)
            return None
        sampling = guider.model_patcher.model.model_sampling
        schedule = StepSchedule(
            sigmas.tolist(),
            start_sigma=sampling.percent_to_sigma(self.config.start_percent),
            end_sigma=sampling.percent_to_sigma(self.config.end_percent),
        )
        diffusion_model = guider.model_patcher.get_model_object("diffusion_model")
        return TeaCacheSampling(self, diffusion_model, schedule)


def _active_cfg(guider: Any) -> float | None:
    """The guider's CFG scale when the negative branch is evaluated, else None."""
    for name in ("cfg", "cfg1", "cfg2"):
        value = getattr(guider, name, 1.0)
        if isinstance(value, (int, float)) and value != 1.0:
            return float(value)
    if guider.model_options.get("disable_cfg1_optimization", False):
        return 1.0
    return None


@dataclass
class TeaCacheCall(CallInfo):
    reuse: bool = False  # the stack is skipped: the cached residual stands in for it


class TeaCacheSampling(CachingRun):
    """One sampling run of TeaCache: the first block decides, the last stores the residual."""

    call_type = TeaCacheCall

    def new_decisions(self) -> TeaCacheRun:
        return TeaCacheRun(self.patch.config, self.schedule.total_steps)

    @eager_frame
    def on_block(self, position: int, last: int, kind: str, args: BlockArgs, run_block: RunBlock) -> BlockArgs:
        call = self.call
        if position == 0:
            call.reuse = self.guarded(self._decide, args) is False  # a failure computes
            if call.reuse:
                replayed = self.replayed_or_none(self._replay, args)
                if replayed is not None:
                    return replayed
                call.reuse = False
        elif call.reuse:
            return identity(args)
        out = run_block(args)
        if position == last:
            self.guarded(self._store, kind, out)
        return out

    def _decide(self, args: BlockArgs) -> bool:
        """At the first block: whether this call computes the stack (else it replays the cache)."""
        call = self.call
        indicator = self.family.indicator(call.diffusion_model, args, call, self.patch.preset.indicator)
        chunks = indicator.chunk(len(call.keys))
        compute = self.run.decide(call.keys, chunks, call.step, call.in_window and not call.between_blocks)
        if compute:
            self.enter_stack(args)
        return compute

    def _replay(self, args: BlockArgs) -> BlockArgs:
        """The whole stack's output on a skipped call: its input plus the cached residual."""
        out = identity(args)
        out["img"] = self.run.apply(self.call.keys, args["img"])
        return out

    def _store(self, kind: str, out: BlockArgs) -> None:
        call = self.call
        if call.between_blocks:  # what acts between blocks is not the model's own: never replay it
            call.stack_input = None
            self.run.store(call.keys, None)  # the next call computes
            return
        self.run.store(call.keys, self.stack_residual(kind, out))

    def describe(self, summary: RunSummary) -> str:
        return (
            f"computed {summary.steps_computed}/{summary.total_steps} steps; "
            f"{summary.calls - summary.calls_computed} of {summary.calls} transformer calls reused the cache"
        )


def apply_teacache(model: Any, family: Family, preset: TeaCachePreset, config: TeaCacheConfig) -> Any:
    """A clone of `model` that runs TeaCache while sampling."""
    return install(model, TeaCachePatch(family, family.variant(model).label, config, preset))
