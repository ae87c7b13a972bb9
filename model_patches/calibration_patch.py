"""Calibrate TeaCache: observe one normal sampling run (nothing skipped) and fit a preset from it.

Per call and CFG branch it records the relative L1 change of TeaCache's indicator, of the
diffusion model's output, and of the first block's residual against the last few calls (what
Cache-DiT's gate with Fn=1 compares). At the end of the run the fit is redone on every run
saved in the preset so far, and the preset file is written.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..caching.calibration import FN_LOOKBACK, RecordedCall, RecordedRun
from ..caching.dbcache import residual_diff_tensor
from ..caching.schedule import StepSchedule
from ..caching.teacache import relative_l1
from ..caching.teacache_presets import TeaCachePreset
from ..caching.user_presets import UserPreset, calibrated, load, path_for, save
from .family import BlockArgs, CallInfo
from .sampling_hooks import CachePatch, eager_frame, install
from .sampling_run import CallIdentity, RunBlock, SamplingRun

logger = logging.getLogger(__name__)


@dataclass
class CalibrationPatch(CachePatch):
    """What Calibrate TeaCache asked for; `last_preset` is the preset saved after the latest run
    (`last_run` is set only when the run was off)."""

    base: TeaCachePreset  # indicator and forced steps to calibrate for
    name: str
    directory: Path
    append: bool
    model: str = ""
    last_preset: UserPreset | None = field(default=None, compare=False)
    last_error: str | None = field(default=None, compare=False)

    method = "Calibrate TeaCache"
    key = "dit_cache.calibration"
    run_key = "dit_cache.calibration.run"

    def start_run(self, guider: Any, sigmas: torch.Tensor) -> CalibrationSampling:
        diffusion_model = guider.model_patcher.get_model_object("diffusion_model")
        return CalibrationSampling(self, diffusion_model, StepSchedule(sigmas.tolist()))

    def existing(self) -> UserPreset | None:
        """The preset this calibration adds to (None: starts a new one); PresetFileError if unreadable."""
        path = path_for(self.directory, self.name)
        if not self.append or not path.exists():
            return None
        existing = load(path)
        if (existing.preset.family, existing.preset.indicator) != (self.family.name, self.base.indicator):
            raise ValueError(
                f"preset_name: {path} was calibrated for {existing.preset.family} with indicator "
                f"{existing.preset.indicator!r}, not {self.family.name} with {self.base.indicator!r}; "
                "choose another name or turn append off"
            )
        return existing

    def add_run(self, run: RecordedRun) -> UserPreset:
        existing = self.existing()
        runs = (*(existing.runs if existing else ()), run)
        preset = calibrated(self.name, self.base, runs, self.model)
        save(self.directory, preset)
        self.last_preset, self.last_error = preset, None
        return preset


@dataclass
class CalibrationCall(CallInfo):
    observed: tuple[torch.Tensor, torch.Tensor] | None = None  # (indicator, Fn residual) of every branch


class CalibrationSampling(SamplingRun):
    """One observed sampling run: block 0 gives the indicator and the Fn residual, the call's end the output.

    Every record is per call identity, so a context window or an extra pass is measured against
    its own earlier calls only.
    """

    call_type = CalibrationCall

    def __init__(self, patch: CalibrationPatch, diffusion_model: torch.nn.Module, schedule: StepSchedule):
        super().__init__(patch.family, diffusion_model, schedule)
        self.patch = patch
        self.branch_ids: dict[Hashable, int] = {}
        self.previous: dict[Hashable, tuple[torch.Tensor, torch.Tensor]] = {}  # last (indicator, output)
        self.fn_history: dict[Hashable, deque[torch.Tensor]] = {}
        self.calls: list[RecordedCall] = []

    def forget(self, identities: Iterable[CallIdentity]) -> None:
        for identity in identities:
            self.previous.pop(identity, None)
            self.fn_history.pop(identity, None)

    @eager_frame
    def on_block(self, position: int, last: int, kind: str, args: BlockArgs, run_block: RunBlock) -> BlockArgs:
        if position != 0:
            return run_block(args)
        # Observing never breaks the render: a failure (through `guarded`) stops the recording only.
        indicator = self.guarded(self._enter, args)
        out = run_block(args)
        if indicator is not None:
            self.guarded(self._observe, indicator, kind, out)
        return out

    def _enter(self, args: BlockArgs) -> torch.Tensor:
        call = self.call
        self.enter_stack(args)
        return self.family.indicator(call.diffusion_model, args, call, self.patch.base.indicator)

    def _observe(self, indicator: torch.Tensor, kind: str, out: BlockArgs) -> None:
        self.call.observed = (indicator, self.stack_residual(kind, out))

    def end_call(self, output: torch.Tensor) -> None:
        call = self.call
        if call.observed is None:  # the block loop was not reached
            return
        keys = call.keys
        parts = len(keys)
        indicators, fn_residuals = (t.chunk(parts) for t in call.observed)
        measured: list[torch.Tensor] = []  # every relative L1 of this call, for one host sync
        layout = []
        for key, indicator, current, fn_residual in zip(keys, indicators, output.chunk(parts), fn_residuals, strict=True):
            previous = self.previous.get(key)
            pair = previous is not None and previous[0].shape == indicator.shape and previous[1].shape == current.shape
            if pair:
                measured += [relative_l1(previous[0], indicator), relative_l1(previous[1], current)]
            history = self.fn_history.setdefault(key, deque(maxlen=FN_LOOKBACK))
            if history and history[0].shape != fn_residual.shape:
                history.clear()
            # As DBCache's gate measures them (in the model's dtype), most recent first.
            measured += [residual_diff_tensor(h, fn_residual).float() for h in history]
            layout.append((pair, len(history)))
            self.previous[key] = (indicator, current)
            history.appendleft(fn_residual)
        values = iter(torch.stack(measured).tolist() if measured else [])
        indicator_changes, output_changes, fn_diffs = [], [], []
        for pair, lookback in layout:
            indicator_changes.append(next(values) if pair else None)
            output_changes.append(next(values) if pair else None)
            fn_diffs.append(tuple(next(values) for _ in range(lookback)))
        branches = tuple(self.branch_ids.setdefault(k, len(self.branch_ids)) for k in keys)
        self.calls.append(
            RecordedCall(
                call.step, call.sigma, branches, tuple(indicator_changes), tuple(output_changes), tuple(fn_diffs)
            )
        )

    def finish(self) -> None:
        self.previous.clear()
        self.fn_history.clear()
        if self.failed or not self.calls:
            reason = "an error stopped the recording" if self.failed else "the model's block loop was never reached"
            self.patch.last_error = f"this run was not saved: {reason}"
            logger.warning("Calibrate TeaCache [%s]: %s", self.family.name, self.patch.last_error)
            return
        try:
            preset = self.patch.add_run(RecordedRun(self.schedule.total_steps, tuple(self.calls)))
        except Exception as error:  # never fail the render because of the calibration
            self.patch.last_error = str(error)
            logger.warning("Calibrate TeaCache: this run was not saved: %s", error)
            return
        logger.info(
            "Calibrate TeaCache [%s]: preset %s from %d run(s): %s; recommended rel_l1_thresh %g (%s)",
            self.family.name,
            preset.name,
            len(preset.runs),
            preset.fit.describe(),
            preset.preset.recommended_thresh,
            path_for(self.patch.directory, preset.name),
        )


def apply_calibration(model: Any, patch: CalibrationPatch) -> Any:
    """A clone of `model` that records calibration data while sampling (and skips nothing)."""
    return install(model, patch)
