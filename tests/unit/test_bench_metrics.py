"""The benchmark's measures: PSNR, SSIM, block counting and the matched-compute interpolation."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import report
from metrics import count_blocks, psnr, ssim


def test_psnr_uses_the_reference_range_as_peak() -> None:
    reference = torch.tensor([0.0, 2.0, 0.0, 2.0])
    assert psnr(reference, reference) == math.inf
    result = reference + torch.tensor([0.2, -0.2, 0.2, -0.2])  # mse 0.04, peak 2
    assert psnr(result, reference) == pytest.approx(10 * math.log10(4 / 0.04))


def test_ssim_is_one_when_identical_and_drops_with_noise() -> None:
    g = torch.Generator().manual_seed(0)
    reference = torch.randn(1, 4, 2, 16, 16, generator=g)
    assert ssim(reference, reference) == pytest.approx(1.0)
    noisy = ssim(reference + 0.3 * torch.randn(reference.shape, generator=g), reference)
    assert 0.5 < noisy < 0.99


def test_count_blocks_counts_every_forward_and_unhooks() -> None:
    blocks = [torch.nn.Identity(), torch.nn.Identity()]
    with count_blocks(blocks) as counter:
        blocks[0](torch.zeros(1))
        blocks[1](torch.zeros(1))
        blocks[1](torch.zeros(1))
    blocks[0](torch.zeros(1))
    assert counter == [3]


def test_matched_compute_interpolates_between_neighbouring_settings() -> None:
    points = [{"block_fraction": 0.4, "psnr_mean": 30.0}, {"block_fraction": 0.6, "psnr_mean": 40.0},
              {"block_fraction": 1.0, "psnr_mean": 60.0}]
    assert report.at_fraction(points, 0.5) == pytest.approx(35.0)
    assert report.at_fraction(points, 0.6) == pytest.approx(40.0)
    assert report.at_fraction(points, 1 / 3) is None  # the sweep never gets below 0.4
