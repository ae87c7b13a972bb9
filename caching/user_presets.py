"""TeaCache presets made by calibration: plain JSON files that users can read, edit and share.

A file holds the preset (coefficients, indicator, recommended threshold), its fit statistics
and the calibration runs it was fitted on, so that more runs can be added later and a target
speedup can be turned into a threshold. Only `name`, `family` and `coefficients` are required:
a hand-written preset without runs works, but cannot choose a threshold for a target.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .calibration import RecordedRun, RescaleFit, fit_runs
from .target_speedup import teacache_threshold
from .teacache import TeaCacheConfig
from .teacache_presets import PRESETS, TeaCachePreset

PREFIX = "user:"  # how calibrated presets appear in Apply TeaCache's model_type list
FORMAT = "dit-cache/teacache-preset"
RECOMMENDED_SPEEDUP = 1.5  # a calibrated preset recommends the threshold that gives this on its runs
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class PresetFileError(ValueError):
    """A preset file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class UserPreset:
    preset: TeaCachePreset
    fit: RescaleFit | None
    runs: tuple[RecordedRun, ...]
    model: str = ""  # the model it was calibrated on, for people reading the file

    @property
    def name(self) -> str:
        return self.preset.name.removeprefix(PREFIX)


def check_name(name: str) -> str:
    """A preset name that is also a safe file name; ValueError names the input otherwise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".json"):
        raise ValueError(
            f"preset_name must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit, got {name!r}"
        )
    return name


def path_for(directory: Path, name: str) -> Path:
    return Path(directory) / f"{check_name(name)}.json"


def names(directory: Path) -> list[str]:
    """Names of the preset files in `directory` (not read: a malformed one fails when chosen)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.json") if _NAME.fullmatch(p.stem))


def calibrated(name: str, base: TeaCachePreset, runs: Sequence[RecordedRun], model: str = "") -> UserPreset:
    """A preset fitted on `runs`, keeping the indicator and forced steps of the preset it was recorded with."""
    fit = fit_runs(runs)
    config = TeaCacheConfig(0.0, fit.coefficients, warmup_steps=base.warmup_steps, force_last_step=base.force_last_step)
    recommended = teacache_threshold(runs, config, RECOMMENDED_SPEEDUP).threshold
    preset = TeaCachePreset(
        name=PREFIX + check_name(name),
        family=base.family,
        coefficients=fit.coefficients,
        recommended_thresh=round(recommended, 4),
        source=f"calibrated by Calibrate TeaCache on {len(runs)} run(s), R² {fit.r2:.3f}",
        indicator=base.indicator,
        warmup_steps=base.warmup_steps,
        force_last_step=base.force_last_step,
    )
    return UserPreset(preset, fit, tuple(runs), model)


def to_json(user: UserPreset) -> dict:
    p = user.preset
    data = {
        "format": FORMAT,
        "name": user.name,
        "family": p.family,
        "model": user.model,
        "coefficients": list(p.coefficients),
        "recommended_thresh": p.recommended_thresh,
        "indicator": p.indicator,
        "warmup_steps": p.warmup_steps,
        "force_last_step": p.force_last_step,
        "source": p.source,
    }
    if user.fit is not None:
        data["fit"] = {"degree": len(user.fit.coefficients) - 1, "r2": user.fit.r2, "samples": user.fit.samples}
    data["runs"] = [run.to_json() for run in user.runs]
    return data


def from_json(data: dict) -> UserPreset:
    """The preset in `data`; KeyError / TypeError / ValueError when something is missing or wrong."""
    if not isinstance(data, dict):
        raise TypeError(f"expected a JSON object, got {type(data).__name__}")
    coefficients = tuple(float(c) for c in data["coefficients"])
    if not coefficients or not all(math.isfinite(c) for c in coefficients):
        raise ValueError(f"coefficients must be one or more finite numbers, got {data['coefficients']!r}")
    family = str(data["family"])
    if family not in {p.family for p in PRESETS.values()}:
        raise ValueError(f"unknown family {family!r}")
    fit = data.get("fit")
    preset = TeaCachePreset(
        name=PREFIX + check_name(str(data["name"])),
        family=family,
        coefficients=coefficients,
        recommended_thresh=float(data.get("recommended_thresh", 0.2)),
        source=str(data.get("source", "user preset")),
        indicator=str(data.get("indicator", "modulated")),
        warmup_steps=int(data.get("warmup_steps", 1)),
        force_last_step=bool(data.get("force_last_step", True)),
    )
    return UserPreset(
        preset,
        RescaleFit(coefficients, float(fit["r2"]), int(fit["samples"])) if fit else None,
        tuple(RecordedRun.from_json(r) for r in data.get("runs", [])),
        str(data.get("model", "")),
    )


def load(path: Path) -> UserPreset:
    """Read a preset file; PresetFileError names the file and what is wrong with it."""
    path = Path(path)
    try:
        return from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise PresetFileError(f"TeaCache preset file {path} does not exist") from None
    except (OSError, KeyError, TypeError, ValueError) as error:  # json.JSONDecodeError is a ValueError
        what = f"missing key {error}" if isinstance(error, KeyError) else str(error)
        raise PresetFileError(f"TeaCache preset file {path} is not a valid preset: {what}") from None


def save(directory: Path, user: UserPreset) -> Path:
    """Write the preset as <directory>/<name>.json (atomically: a reader never sees half a file)."""
    path = path_for(directory, user.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(to_json(user), indent=1), encoding="utf-8")
    os.replace(partial, path)
    return path
