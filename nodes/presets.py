"""Where calibrated presets live in ComfyUI, and how the nodes list them."""

from __future__ import annotations

import logging
from pathlib import Path

from ..caching.user_presets import PREFIX, names

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
