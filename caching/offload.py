"""Where cached tensors live: with the model (default), or on the CPU to spare GPU memory."""

from __future__ import annotations

import torch

CACHE_DEVICES = ("main_device", "cpu")


def offload_device(cache_device: str) -> str | None:
    """The device a node's `cache_device` choice keeps cached tensors on; None = where they are made."""
    if cache_device not in CACHE_DEVICES:
        raise ValueError(f"cache_device must be one of {', '.join(CACHE_DEVICES)}, got {cache_device!r}")
    return "cpu" if cache_device == "cpu" else None


def to_cache(tensor: torch.Tensor, device: str | None) -> torch.Tensor:
    """`tensor` as it is kept in a cache on `device` (None: left where it is)."""
    return tensor if device is None else tensor.to(device)


def from_cache(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A cached tensor brought back to where `like` lives, to be combined with it."""
    return tensor.to(like.device)
