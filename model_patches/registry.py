"""Which family glue fits a loaded model: every module in model_patches/families/, matched by exact class.

Subclasses with their own forward (VaceWanModel, WanModel_S2V, ...) are not matched: their
loops do extra work between blocks that a skipped stack would silently drop.
Family modules are imported one by one, so a ComfyUI that moved one family's internals
disables only that family (with a warning), never the pack.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from functools import cache
from typing import Any

from . import families as families_package
from .family import Family, config_name

logger = logging.getLogger(__name__)


@cache
def families() -> tuple[Family, ...]:
    """Every family this ComfyUI can run, in module-name order."""
    found = []
    for module in sorted(info.name for info in pkgutil.iter_modules(families_package.__path__)):
        try:
            family = importlib.import_module(f"{families_package.__name__}.{module}").FAMILY
        except Exception as error:  # an import error here must not take the pack down
            logger.warning("dit-cache: %s support is unavailable in this ComfyUI (%s)", module, error)
            continue
        found.append(family)
    return tuple(found)


def listing(labels: list[str]) -> str:
    """'A, B and C'."""
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def supported() -> str:
    """The families, as node descriptions and warnings name them."""
    return ", ".join(family.label for family in families())


def cfg_shared() -> str:
    """The families whose TeaCache keeps one state for both CFG branches (so it is off under CFG)."""
    return listing([family.label for family in families() if family.cfg_shares_state])


def diffusion_model_class(model_patcher: Any) -> str:
    model = getattr(model_patcher, "model", None)
    return type(getattr(model, "diffusion_model", model)).__name__


def detect(model_patcher: Any) -> Family | None:
    """The family glue for this MODEL, or None when the pack does not support it."""
    class_name = diffusion_model_class(model_patcher)
    config = config_name(model_patcher)
    return next((family for family in families() if family.matches(class_name, config)), None)


def detect_or_warn(model_patcher: Any, node: str) -> Family | None:
    """`detect`, with the one warning a node gives when it passes an unsupported model through."""
    family = detect(model_patcher)
    if family is None:
        logger.warning(
            "%s: %s is not supported (supported: %s); the model passes through unchanged",
            node,
            diffusion_model_class(model_patcher),
            supported(),
        )
    return family
