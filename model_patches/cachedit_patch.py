"""Apply Cache-DiT (DBCache, a calibrator, SCM) to a ComfyUI MODEL.

The block stack splits into the first Fn blocks (always computed; their residual is the
similarity probe), the middle blocks (skipped on cached steps: their cached residual, or a
calibrator's forecast of it, stands in) and the last Bn blocks (always computed, on
the approximated state). The decisions are `caching.dbcache`'s, one state per CFG branch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..caching.dbcache import DBCacheConfig, DBCacheRun
from ..caching.records import RunSummary
from ..caching.schedule import StepSchedule
from .family import BlockArgs, CallInfo, Family
from .sampling_hooks import CachePatch, eager_frame, identity, install
from .sampling_run import CachingRun, RunBlock

Streams = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class CacheDiTPatch(CachePatch):
    """The node's settings, kept in the MODEL's transformer_options."""

    config: DBCacheConfig

    key = "dit_cache.cachedit"
    run_key = "dit_cache.cachedit.run"
    method = "Cache-DiT"

    def start_run(self, guider: Any, sigmas: torch.Tensor) -> CacheDiTSampling:
        diffusion_model = guider.model_patcher.get_model_object("diffusion_model")
        return CacheDiTSampling(self, diffusion_model, StepSchedule(sigmas.tolist()))


def block_count(family: Family, diffusion_model: torch.nn.Module) -> int:
    return len(family.block_keys(diffusion_model))


def check_block_split(config: DBCacheConfig, family: Family, diffusion_model: torch.nn.Module) -> None:
    """Fn + Bn must leave at least one middle block to cache, for this model's block count."""
    blocks = block_count(family, diffusion_model)
    if config.Fn_compute_blocks + config.Bn_compute_blocks >= blocks:
        raise ValueError(
            f"Fn_compute_blocks + Bn_compute_blocks must be less than this {family.name} model's {blocks} "
            f"transformer blocks (got {config.Fn_compute_blocks} + {config.Bn_compute_blocks}), so that "
            "some middle blocks are left to cache"
        )


@dataclass
class CacheDiTCall(CallInfo):
    reuse: bool = False  # the middle blocks are skipped: the cache (or a forecast) stands in for them
    fn_residuals: list[torch.Tensor] = field(default_factory=list)  # the probe, per branch
    middle_input: Streams | None = None


class CacheDiTSampling(CachingRun):
    """One sampling run: decides after the Fn blocks, replays or stores the middle."""

    call_type = CacheDiTCall

    def __init__(self, patch: CacheDiTPatch, diffusion_model: torch.nn.Module, schedule: StepSchedule):
        self.config = patch.config
        self.blocks = block_count(patch.family, diffusion_model)
        self.middle_end = self.blocks - 1 - self.config.Bn_compute_blocks  # last middle position
        super().__init__(patch, diffusion_model, schedule)
        keys = patch.family.block_keys(diffusion_model)
        text_kinds = patch.family.text_stream_kinds
        # The middle ends in a joint stage (Flux's, HunyuanVideo's single blocks: text and image in one
        # sequence). Its image and text parts are cached as two streams, as cache-dit keeps them: a calibrator
        # that is not elementwise (DMD) forecasts each on its own.
        self.ends_joint = self.joint_position is not None and keys[self.middle_end][0] not in text_kinds

    def new_decisions(self) -> DBCacheRun:
        return DBCacheRun(self.config, self.schedule.total_steps)

    @eager_frame
    def on_block(self, position: int, last: int, kind: str, args: BlockArgs, run_block: RunBlock) -> BlockArgs:
        call = self.call
        fn = self.config.Fn_compute_blocks
        if position < fn:
            if position == 0:  # the middle computes until the Fn residual says otherwise (a failure computes)
                self.guarded(self.enter_stack, args)
            out = run_block(args)
            if position == fn - 1:
                self.guarded(self._decide, kind, out)
            return out
        if position > self.middle_end:
            return run_block(args)
        if position == fn:
            if call.reuse:
                replayed = self.replayed_or_none(self._approximate, kind, args)  # None: nothing skipped yet, computes
                if replayed is not None:
                    return replayed
                call.reuse = False
            self.guarded(self._keep_middle_input, kind, args)
        if call.reuse:
            return identity(args)
        out = run_block(args)
        if position == self.middle_end and not call.between_blocks:  # never replay control or patches
            self.guarded(self._store, kind, out)
        return out

    def _keep_middle_input(self, kind: str, args: BlockArgs) -> None:
        self.call.middle_input = self._streams(kind, args, clone=True)

    def _streams(self, kind: str, args: BlockArgs, clone: bool = False) -> Streams:
        img = args["img"]
        txt = args["txt"] if kind in self.family.text_stream_kinds else None
        if clone:
            return img.clone(), txt.clone() if txt is not None else None
        return img, txt

    def _decide(self, kind: str, out: BlockArgs) -> None:
        call = self.call
        fn_residual = self.stack_residual(kind, out)
        call.fn_residuals = list(fn_residual.chunk(len(call.keys)))
        # Never replay what acts between blocks (ControlNet, block patches): it is not the model's own.
        computes = self.run.decide(call.keys, call.fn_residuals, call.step, may_cache=not call.between_blocks)
        call.reuse = not computes

    def _store(self, kind: str, out: BlockArgs) -> None:
        call = self.call
        in_img, in_txt = call.middle_input
        out_img, out_txt = self._streams(kind, out)
        if self.ends_joint:
            out_img, out_txt = self.split(out_img)
            if in_txt is None:  # the middle began in the joint stage too
                in_img, in_txt = self.split(in_img)
        residual_img = out_img - in_img
        residual_txt = out_txt - in_txt if out_txt is not None else None
        if not self.config.caches_residual:  # kept as is: a later block may update it in place
            out_img = out_img.clone()
            out_txt = out_txt.clone() if out_txt is not None else None
        self.run.store(call.keys, call.step, call.fn_residuals, (out_img, out_txt), (residual_img, residual_txt))
        call.middle_input = None
        call.fn_residuals = []

    def _approximate(self, kind: str, args: BlockArgs) -> BlockArgs | None:
        """The first middle block on a cached step: the whole middle's cached output at once.

        On an error (through `guarded`) the middle computes instead: nothing was skipped yet.
        """
        call = self.call
        img, txt = self._streams(kind, args)
        joint_input = self.ends_joint and txt is None  # the middle begins in the joint stage
        if joint_input:
            img, txt = self.split(img)
        new_img, new_txt = self.run.approximate(call.keys, call.step, (img, txt))
        new_img = new_img.to(img.dtype)
        new_txt = new_txt.to(txt.dtype) if new_txt is not None else None
        if joint_input:
            new_img, new_txt = self.joint(new_img, new_txt), None
        out = identity(args)
        out["img"] = new_img
        if new_txt is not None:
            out["txt"] = new_txt
        return out

    def describe(self, summary: RunSummary) -> str:
        cached_calls = summary.calls - summary.calls_computed
        middle = self.blocks - self.config.Fn_compute_blocks - self.config.Bn_compute_blocks
        diffs = [d for r in summary.records for d in r.rel_l1 if d is not None and d > 0]
        diff_text = (
            f"residual diff min {min(diffs):.3f} / mean {sum(diffs) / len(diffs):.3f} / max {max(diffs):.3f}"
            if diffs
            else "no residual diffs measured"
        )
        return (
            f"computed {summary.steps_computed}/{summary.total_steps} steps; {cached_calls} of {summary.calls} "
            f"transformer calls cached; blocks computed {summary.calls * self.blocks - cached_calls * middle}/"
            f"{summary.calls * self.blocks}; {diff_text}"
        )


def apply_cachedit(model: Any, family: Family, config: DBCacheConfig) -> Any:
    """A clone of `model` that runs Cache-DiT while sampling."""
    check_block_split(config, family, model.get_model_object("diffusion_model"))
    return install(model, CacheDiTPatch(family, family.variant(model).label, config))
