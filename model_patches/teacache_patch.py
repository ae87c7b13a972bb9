"""Apply TeaCache to a ComfyUI MODEL: the run that decides per call, and the installer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..caching.records import RunSummary, computed_after_all
from ..caching.schedule import StepSchedule
from ..caching.teacache import TeaCacheConfig, TeaCacheRun
from ..caching.teacache_presets import TeaCachePreset
from .family import BlockArgs, Family
from .sampling_hooks import RunBlock, SamplingRun, eager_frame, identity, install

logger = logging.getLogger(__name__)


@dataclass
class TeaCachePatch:
    """The node's settings, kept in the MODEL's transformer_options; `last_run` tells what happened."""

    config: TeaCacheConfig
    family: Family
    preset: TeaCachePreset
    member: str  # the family member it was applied to, as logs and the Cache report name it
    last_run: RunSummary | None = field(default=None, compare=False)

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


class TeaCacheSampling(SamplingRun):
    """One sampling run of TeaCache: the first block decides, the last stores the residual."""

    def __init__(self, patch: TeaCachePatch, diffusion_model: torch.nn.Module, schedule: StepSchedule):
        super().__init__(patch.family, diffusion_model, schedule)
        self.patch = patch
        self.run = TeaCacheRun(patch.config, schedule.total_steps)

    @eager_frame
    def on_block(self, position: int, last: int, kind: str, args: BlockArgs, run_block: RunBlock) -> BlockArgs:
        call = self.call
        if position == 0:
            call.reuse = self.guarded(self._decide, args) is False  # a failure computes
            if call.reuse:
                replayed = self.guarded(self._replay, args)
                if replayed is not None:
                    return replayed
                computed_after_all(self.run.records, call.keys)
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

    def finish(self) -> None:
        summary = replace(self.run.summary(), disabled=self.failure)
        self.patch.last_run = summary
        self.run = TeaCacheRun(self.patch.config, self.schedule.total_steps)  # drop cached tensors
        if summary.calls == 0:
            logger.warning(
                "TeaCache [%s]: the model's block loop was never reached, so nothing was cached "
                "(a ComfyUI version whose %s forward this pack does not know?)",
                self.family.name,
                type(self.diffusion_model).__name__,
            )
            return
        logger.info(
            "TeaCache [%s, %s]: computed %d/%d steps; %d of %d transformer calls reused the cache (%s)",
            self.family.name,
            self.patch.config.tag(),
            summary.steps_computed,
            summary.total_steps,
            summary.calls - summary.calls_computed,
            summary.calls,
            self.patch.member,
        )


def apply_teacache(model: Any, family: Family, preset: TeaCachePreset, config: TeaCacheConfig) -> Any:
    """A clone of `model` that runs TeaCache while sampling."""
    return install(model, TeaCachePatch(config, family, preset, family.variant(model).label))
