"""Fidelity of a result against the uncached one (PSNR, SSIM) and counting of transformer blocks."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _peak(reference: torch.Tensor) -> float:
    return float(reference.max() - reference.min())


def relative_mse(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean squared error over the squared value range of the reference (PSNR's 10^(-PSNR/10))."""
    return torch.mean((result.double() - reference.double()) ** 2).item() / _peak(reference) ** 2


def psnr_of(relative: float) -> float:
    """PSNR in dB of a relative MSE; inf when zero."""
    return math.inf if relative == 0.0 else -10.0 * math.log10(relative)


def psnr(result: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB with the reference's value range as peak; inf when identical."""
    return psnr_of(relative_mse(result, reference))


def _gaussian_window(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(result: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window 7 px, sigma 1.5, K1 0.01, K2 0.03) over every channel and
    frame of a latent [B, C, (T,) H, W], with the reference's value range as L. 7 px because latents are small."""
    planes_r = result.double().reshape(-1, 1, *result.shape[-2:])
    planes_x = reference.double().reshape(-1, 1, *reference.shape[-2:])
    window = _gaussian_window()
    c1, c2 = (0.01 * _peak(reference)) ** 2, (0.03 * _peak(reference)) ** 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(t, window)

    mu_r, mu_x = blur(planes_r), blur(planes_x)
    var_r = blur(planes_r * planes_r) - mu_r**2
    var_x = blur(planes_x * planes_x) - mu_x**2
    cov = blur(planes_r * planes_x) - mu_r * mu_x
    index = ((2 * mu_r * mu_x + c1) * (2 * cov + c2)) / ((mu_r**2 + mu_x**2 + c1) * (var_r + var_x + c2))
    return float(index.mean())


@contextmanager
def count_blocks(blocks: list[torch.nn.Module]) -> Iterator[list[int]]:
    """Counts every forward of ``blocks`` (torch hooks, independent of the method under test): yields [count]."""
    counter = [0]

    def hook(module: torch.nn.Module, args: object) -> None:
        counter[0] += 1

    handles = [block.register_forward_pre_hook(hook) for block in blocks]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()
