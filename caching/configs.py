"""From a node's checked inputs to the one config its method runs with.

Presets (built-in or calibrated files) and target speedups are resolved here, below the nodes:
a node reads its inputs, gets one config, and hands it to `model_patches/`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from .dbcache import DBCacheConfig
from .node_inputs import dbcache_config, teacache_config
from .target_speedup import SigmaWindow, dbcache_threshold, teacache_threshold
from .teacache import TeaCacheConfig
from .teacache_presets import PRESETS, TeaCachePreset
from .user_presets import PREFIX, PresetFileError, UserPreset, load, path_for

logger = logging.getLogger(__name__)


def load_user_preset(choice: str, input_name: str, directory: Path) -> UserPreset:
    """The calibrated preset behind 'user:<name>' in `directory`; the error names the input (and the file, if it is one)."""
    if not isinstance(choice, str) or not choice.startswith(PREFIX):
        raise ValueError(f"{input_name} must be a calibrated preset '{PREFIX}<name>', got {choice!r}")
    try:
        return load(path_for(directory, choice.removeprefix(PREFIX)))
    except PresetFileError as error:
        raise PresetFileError(f"{input_name} {choice!r}: {error}") from None
    except ValueError as error:  # not a valid preset name
        raise ValueError(f"{input_name} {choice!r}: {error}") from None


def resolve_teacache_preset(model_type: str, directory: Path) -> tuple[TeaCachePreset, UserPreset | None]:
    """A built-in preset, or a calibrated one with its calibration data; ValueError names the input."""
    if model_type in PRESETS:
        return PRESETS[model_type], None
    user = load_user_preset(model_type, "model_type", directory)
    return user.preset, user


def teacache_run_config(
    values: Mapping[str, Any], model_type: str, directory: Path, percent_to_sigma: Callable[[float], float]
) -> tuple[TeaCachePreset, TeaCacheConfig]:
    """Apply TeaCache's checked values as the preset and config it runs with.

    `model_type` is the node's choice with `auto` already turned into the member's preset; a
    `target_speedup` picks the threshold (`percent_to_sigma`: the model's, for the window it aims in).
    """
    preset, user = resolve_teacache_preset(model_type, directory)
    config = teacache_config(values, preset)
    if values["target_speedup"]:
        window = SigmaWindow(percent_to_sigma(config.start_percent), percent_to_sigma(config.end_percent))
        threshold = _teacache_target_threshold(window, preset, user, config, values["target_speedup"])
        config = replace(config, rel_l1_thresh=threshold)
    return preset, config


def dbcache_run_config(values: Mapping[str, Any], directory: Path, family: str) -> DBCacheConfig:
    """Apply Cache-DiT's checked values as the config it runs with, a `target_speedup` resolved."""
    config = dbcache_config(values)
    if values["target_speedup"]:
        threshold = _cachedit_target_threshold(values["calibration"], directory, config, values["target_speedup"], family)
        config = replace(config, residual_diff_threshold=threshold)
    return config


def _teacache_target_threshold(
    window: SigmaWindow, preset: TeaCachePreset, user: UserPreset | None, config: TeaCacheConfig, target: float
) -> float:
    """rel_l1_thresh for `target`: chosen on the preset's calibration runs, else its recommended one."""
    if user is None or not user.runs:
        logger.warning(
            "Apply TeaCache: preset %s has no calibration runs, so target_speedup %.2fx cannot choose a threshold; "
            "using its recommended rel_l1_thresh %g (run Calibrate TeaCache on this model to hit a target)",
            preset.name,
            target,
            preset.recommended_thresh,
        )
        return preset.recommended_thresh
    choice = teacache_threshold(user.runs, config, target, window)
    log = logger.info if choice.reachable else logger.warning
    log(
        "Apply TeaCache: target %.2fx on %d calibration run(s) of %s: %s",
        target,
        len(user.runs),
        preset.name,
        choice.describe(),
    )
    return choice.threshold


def _cachedit_target_threshold(
    calibration: str, directory: Path, config: DBCacheConfig, target: float, family: str
) -> float:
    """residual_diff_threshold for `target`: chosen on a calibration's runs, else the node's own threshold."""
    reason = "no calibration is chosen"
    if calibration and calibration != "none":
        user = load_user_preset(calibration, "calibration", directory)
        if user.preset.family != family:
            reason = f"{calibration} was calibrated on a {user.preset.family} model, not {family}"
        elif not user.runs:
            reason = f"{calibration} has no calibration runs"
        else:
            try:
                choice = dbcache_threshold(user.runs, config, target)
            except ValueError as error:
                reason = f"{calibration} cannot predict these settings ({error})"
            else:
                log = logger.info if choice.reachable else logger.warning
                log(
                    "Apply Cache-DiT: target %.2fx on %d calibration run(s) of %s: %s",
                    target,
                    len(user.runs),
                    calibration,
                    choice.describe(),
                )
                return choice.threshold
    logger.warning(
        "Apply Cache-DiT: target_speedup %.2fx needs a calibration with first-block residual diffs (Fn=1), but "
        "%s; using residual_diff_threshold %g",
        target,
        reason,
        config.residual_diff_threshold,
    )
    return config.residual_diff_threshold
