"""Apply Cache-DiT (DBCache, TaylorSeer, SCM) to a ComfyUI MODEL.

The block stack splits into the first Fn blocks (always computed; their residual is the
similarity probe), the middle blocks (skipped on cached steps: their cached residual, or
TaylorSeer's extrapolation of it, stands in) and the last Bn blocks (always computed, on
the approximated state). The decisions are `caching.dbcache`'s, one state per CFG branch.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..caching.dbcache import DBCacheBranch, DBCacheConfig
from ..caching.records import CallRecord, RunSummary, computed_after_all
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
        # e.g. Flux with the middle from a double block into the single ones (txt, img -> joint)
        self.crosses_streams = (
            keys[self.config.Fn_compute_blocks][0] in text_kinds and keys[self.middle_end][0] not in text_kinds
        )
        self.branches: dict[Hashable, DBCacheBranch] = {}
        self.records: list[CallRecord] = []

    @eager_frame
    def on_block(self, position: int, last: int, kind: str, args: BlockArgs, run_block: RunBlock) -> BlockArgs:
        call = self.call
        fn = self.config.Fn_compute_blocks
        if position < fn:
            if position == 0:  # the middle computes until the Fn residual says otherwise (a failure computes)
                self.guarded(self._begin, args)
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
                computed_after_all(self.records, call.keys)  # nothing was skipped yet: the middle computes
                call.reuse = False
            self.guarded(self._keep_middle_input, kind, args)
        if call.reuse:
            return identity(args)
        out = run_block(args)
        if position == self.middle_end and not call.between_blocks:  # never replay control or patches
            self.guarded(self._store, kind, out)
        return out

    def _begin(self, args: BlockArgs) -> None:
        self.call.stack_input = args["img"].clone()  # blocks may update their input in place

    def _keep_middle_input(self, kind: str, args: BlockArgs) -> None:
        self.call.middle_input = self._streams(kind, args, clone=True)

    def _streams(self, kind: str, args: BlockArgs, clone: bool = False) -> Streams:
        img = args["img"]
        txt = args["txt"] if kind in self.family.text_stream_kinds else None
        if clone:
            return img.clone(), txt.clone() if txt is not None else None
        return img, txt

    def _branch(self, key: Hashable) -> DBCacheBranch:
        if key not in self.branches:
            self.branches[key] = DBCacheBranch(self.config, self.schedule.total_steps)
        return self.branches[key]

    def _decide(self, kind: str, out: BlockArgs) -> None:
        call = self.call
        fn_residual = self.image_tokens(kind, out["img"]) - call.stack_input
        call.stack_input = None
        call.fn_residuals = list(fn_residual.chunk(len(call.keys)))
        verdicts = [self._branch(k).can_cache(call.step, r) for k, r in zip(call.keys, call.fn_residuals, strict=True)]
        # One forward carries every branch in it: it caches only when all of them may.
        use_cache = all(verdicts) and not call.between_blocks
        if use_cache:
            for key in call.keys:
                self.branches[key].mark_cached(call.step)
        diffs = tuple(self.branches[k].residual_diffs.get(call.step) for k in call.keys)
        self.records.append(CallRecord(call.step, call.keys, diffs, not use_cache))
        call.reuse = use_cache

    def _store(self, kind: str, out: BlockArgs) -> None:
        call = self.call
        in_img, in_txt = call.middle_input
        out_img, out_txt = self._streams(kind, out)
        if self.crosses_streams:  # the middle ran from two streams into the joint one
            in_img, in_txt = self.joint(in_img, in_txt), None
        residual_img = out_img - in_img
        residual_txt = out_txt - in_txt if out_txt is not None else None
        if not self.config.caches_residual:  # kept as is: a later block may update it in place
            out_img = out_img.clone()
            out_txt = out_txt.clone() if out_txt is not None else None
        parts = len(call.keys)
        for i, key in enumerate(call.keys):
            self.branches[key].store(
                call.step,
                call.fn_residuals[i],
                (_chunk(out_img, parts, i), _chunk(out_txt, parts, i)),
                (_chunk(residual_img, parts, i), _chunk(residual_txt, parts, i)),
            )
        call.middle_input = None
        call.fn_residuals = []

    def _approximate(self, kind: str, args: BlockArgs) -> BlockArgs | None:
        """The first middle block on a cached step: the whole middle's cached output at once.

        On an error (through `guarded`) the middle computes instead: nothing was skipped yet.
        """
        call = self.call
        img, txt = self._streams(kind, args)
        joint = self.crosses_streams
        streams = (self.joint(img, txt), None) if joint else (img, txt)
        parts = len(call.keys)
        approximations = [
            self.branches[key].approximate(call.step, tuple(_chunk(t, parts, i) for t in streams))
            for i, key in enumerate(call.keys)
        ]
        new_img = torch.cat([a[0] for a in approximations]).to(img.dtype)
        new_txt = torch.cat([a[1] for a in approximations]).to(txt.dtype) if txt is not None and not joint else None
        if joint:
            new_img, new_txt = self.split(new_img)
        out = identity(args)
        out["img"] = new_img
        if new_txt is not None:
            out["txt"] = new_txt
        return out

    def finish(self) -> None:
        summary = RunSummary(self.schedule.total_steps, tuple(self.records), disabled=self.failure)
        self.patch.last_run = summary
        self.branches.clear()  # drop cached tensors
        if summary.calls == 0:
            logger.warning(
                "Cache-DiT [%s]: the model's block loop was never reached, nothing was cached", self.family.name
            )
            return
        cached_calls = summary.calls - summary.calls_computed
        middle = self.blocks - self.config.Fn_compute_blocks - self.config.Bn_compute_blocks
        diffs = [d for r in self.records for d in r.rel_l1 if d is not None and d > 0]
        diff_text = (
            f"residual diff min {min(diffs):.3f} / mean {sum(diffs) / len(diffs):.3f} / max {max(diffs):.3f}"
            if diffs
            else "no residual diffs measured"
        )
        logger.info(
            "Cache-DiT [%s, %s]: computed %d/%d steps; %d of %d transformer calls cached; blocks computed %d/%d; %s",
            self.family.name,
            self.config.tag(),
            summary.steps_computed,
            summary.total_steps,
            cached_calls,
            summary.calls,
            summary.calls * self.blocks - cached_calls * middle,
            summary.calls * self.blocks,
            diff_text,
        )


def _chunk(tensor: torch.Tensor | None, parts: int, index: int) -> torch.Tensor | None:
    return tensor.chunk(parts)[index] if tensor is not None else None


def apply_cachedit(model: Any, family: Family, config: DBCacheConfig) -> Any:
    """A clone of `model` that runs Cache-DiT while sampling."""
    check_block_split(config, family, model.get_model_object("diffusion_model"))
    return install(model, CacheDiTPatch(config, family), family)
