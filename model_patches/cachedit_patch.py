"""Apply Cache-DiT (DBCache, a calibrator, SCM) to a ComfyUI MODEL.

The block stack splits into the first Fn blocks (always computed; their residual is the
similarity probe), the middle blocks (skipped on cached steps: their cached residual, or a
calibrator's forecast of it, stands in) and the last Bn blocks (always computed, on
the approximated state). The decisions are `caching.dbcache`'s, one state per CFG branch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..caching.dbcache import DBCacheConfig, DBCacheRun
from ..caching.records import RunSummary, computed_after_all
from ..caching.schedule import StepSchedule
from .family import BlockArgs, Family
from .sampling_hooks import RunBlock, SamplingRun, eager_frame, identity, install

logger = logging.getLogger(__name__)

Streams = tuple[torch.Tensor, torch.Tensor | None]


@dataclass
class CacheDiTPatch:
    """The node's settings, kept in the MODEL's transformer_options; `last_run` tells what happened."""

    config: DBCacheConfig
    family: Family
    member: str  # the family member it was applied to, as logs and the Cache report name it
    last_run: RunSummary | None = field(default=None, compare=False)

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


class CacheDiTSampling(SamplingRun):
    """One sampling run: decides after the Fn blocks, replays or stores the middle."""

    def __init__(self, patch: CacheDiTPatch, diffusion_model: torch.nn.Module, schedule: StepSchedule):
        super().__init__(patch.family, diffusion_model, schedule)
        self.patch = patch
        self.config = patch.config
        self.blocks = block_count(patch.family, diffusion_model)
        self.middle_end = self.blocks - 1 - self.config.Bn_compute_blocks  # last middle position
        keys = patch.family.block_keys(diffusion_model)
        text_kinds = patch.family.text_stream_kinds
        # The middle ends in a joint stage (Flux's, HunyuanVideo's single blocks: text and image in one
        # sequence). Its image and text parts are cached as two streams, as cache-dit keeps them: a calibrator
        # that is not elementwise (DMD) forecasts each on its own.
        self.ends_joint = self.joint_position is not None and keys[self.middle_end][0] not in text_kinds
        self.run = DBCacheRun(self.config, schedule.total_steps)

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
                replayed = self.guarded(self._approximate, kind, args)
                if replayed is not None:
                    return replayed
                computed_after_all(self.run.records, call.keys)  # nothing was skipped yet: the middle computes
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

    def finish(self) -> None:
        summary = replace(self.run.summary(), disabled=self.failure)
        self.patch.last_run = summary
        self.run = DBCacheRun(self.config, self.schedule.total_steps)  # drop cached tensors
        if summary.calls == 0:
            logger.warning(
                "Cache-DiT [%s]: the model's block loop was never reached, nothing was cached", self.family.name
            )
            return
        cached_calls = summary.calls - summary.calls_computed
        middle = self.blocks - self.config.Fn_compute_blocks - self.config.Bn_compute_blocks
        diffs = [d for r in summary.records for d in r.rel_l1 if d is not None and d > 0]
        diff_text = (
            f"residual diff min {min(diffs):.3f} / mean {sum(diffs) / len(diffs):.3f} / max {max(diffs):.3f}"
            if diffs
            else "no residual diffs measured"
        )
        logger.info(
            "Cache-DiT [%s, %s]: computed %d/%d steps; %d of %d transformer calls cached; blocks computed %d/%d; %s (%s)",
            self.family.name,
            self.config.tag(),
            summary.steps_computed,
            summary.total_steps,
            cached_calls,
            summary.calls,
            summary.calls * self.blocks - cached_calls * middle,
            summary.calls * self.blocks,
            diff_text,
            self.patch.member,
        )


def apply_cachedit(model: Any, family: Family, config: DBCacheConfig) -> Any:
    """A clone of `model` that runs Cache-DiT while sampling."""
    check_block_split(config, family, model.get_model_object("diffusion_model"))
    return install(model, CacheDiTPatch(config, family, family.variant(model).label))
