"""Where calibrated presets live in ComfyUI, how the nodes list and resolve them, and target speedups."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..caching.dbcache import DBCacheConfig
from ..caching.target_speedup import SigmaWindow, dbcache_threshold, teacache_threshold
from ..caching.teacache import TeaCacheConfig
from ..caching.teacache_presets import PRESETS, TeaCachePreset
from ..caching.user_presets import PREFIX, PresetFileError, UserPreset, load, names, path_for

logger = logging.getLogger(__name__)


def presets_directory() -> Path:
    """<ComfyUI user directory>/dit_cache/teacache_presets."""
    import folder_paths

    return Path(folder_paths.get_user_directory()) / "dit_cache" / "teacache_presets"


def user_choices() -> list[str]:
    """Calibrated presets on disk as the nodes list them ('user:<name>'); read when /object_info is asked."""
    try:
        return [PREFIX + name for name in names(presets_directory())]
    except Exception as error:  # a missing or unreadable user directory must not hide the node
        logger.warning("dit-cache: cannot list calibrated presets: %r", error)
        return []


def load_user_preset(choice: str, input_name: str) -> UserPreset:
    """The calibrated preset behind 'user:<name>'; the error names the input (and the file, if it is one)."""
    if not isinstance(choice, str) or not choice.startswith(PREFIX):
        raise ValueError(f"{input_name} must be a calibrated preset '{PREFIX}<name>', got {choice!r}")
    try:
        return load(path_for(presets_directory(), choice.removeprefix(PREFIX)))
    except PresetFileError as error:
        raise PresetFileError(f"{input_name} {choice!r}: {error}") from None
    except ValueError as error:  # not a valid preset name
        raise ValueError(f"{input_name} {choice!r}: {error}") from None


def resolve_teacache_preset(model_type: str) -> tuple[TeaCachePreset, UserPreset | None]:
    """A built-in preset, or a calibrated one with its calibration data; ValueError names the input."""
    if model_type in PRESETS:
        return PRESETS[model_type], None
    user = load_user_preset(model_type, "model_type")
    return user.preset, user


def sigma_window(model: Any, start_percent: float, end_percent: float) -> SigmaWindow:
    sampling = model.get_model_object("model_sampling")
    return SigmaWindow(sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent))


def teacache_target_threshold(
    model: Any, preset: TeaCachePreset, user: UserPreset | None, config: TeaCacheConfig, target: float
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
    window = sigma_window(model, config.start_percent, config.end_percent)
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


def cachedit_target_threshold(calibration: str, config: DBCacheConfig, target: float, family: str) -> float:
    """residual_diff_threshold for `target`: chosen on a calibration's runs, else the node's own threshold."""
    reason = "no calibration is chosen"
    if calibration and calibration != "none":
        user = load_user_preset(calibration, "calibration")
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
