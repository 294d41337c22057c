"""PSNR and SSIM against direct, loop-based computations of their definitions (VidTok's)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from divot_llm.metrics import mean_colour_guess, psnr, reconstruction_metrics, ssim
from divot_llm.metrics.quality import ssim_pooling


def clips(seed: int, shape=(2, 3, 3, 14, 13)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_psnr_is_per_frame_then_averaged():
    a, b = clips(0), clips(1)
    expected = []
    for clip in range(2):
        per_frame = []
        for frame in range(3):
            x, y = (a[clip, frame].double() + 1) / 2, (b[clip, frame].double() + 1) / 2
            per_frame.append(-10 * math.log10(((x - y) ** 2).mean().item() + 1e-8))
        expected.append(sum(per_frame) / 3)
    np.testing.assert_allclose(psnr(a, b).numpy(), expected, rtol=1e-5)
    torch.testing.assert_close(psnr(a, a), torch.full((2,), 80.0))  # exact frames: 1e-8 bounds them


def naive_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 on one (H, W) channel in [0, 1]: 11x11 Gaussian (sigma 1.5) weighted
    statistics at every valid window position, averaged."""
    r = np.arange(11) - 5
    w = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cov = (w * (px - mx) * (py - my)).sum()
            values.append(((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_definition():
    a = clips(0)
    b = (a + 0.3 * clips(1)).clamp(-1, 1)  # related images: SSIM well inside (0, 1)
    expected = [
        np.mean(
            [
                naive_ssim((a[c, f, ch].double().numpy() + 1) / 2, (b[c, f, ch].double().numpy() + 1) / 2)
                for f in range(3)
                for ch in range(3)
            ]
        )
        for c in range(2)
    ]
    np.testing.assert_allclose(ssim(a, b).numpy(), expected, rtol=1e-4)
    torch.testing.assert_close(ssim(a, a), torch.ones(2))
    metrics = reconstruction_metrics(b, a)
    assert (
        set(metrics) == {"psnr", "ssim", "psnr_mean_colour", "psnr_clip_colour"} and 0 < metrics["ssim"] < 1
    )


def test_mean_colour_guesses_are_flat_means_of_all_clips_and_of_each():
    # Half black, half white (guess mid-grey, off by 0.5 on every [0, 1] pixel: 6.02 dB),
    # and half 0.25, half 0.75 (guess 0.5, off by 0.25: 12.04 dB). Together both also
    # average to mid-grey.
    clips = torch.ones(2, 3, 3, 16, 16)
    clips[:, :, :, :8] = -1
    clips[1] *= 0.5
    torch.testing.assert_close(mean_colour_guess(clips, per_clip=True), torch.zeros_like(clips))
    clips[1] += 0.2  # the second clip: 0.35 / 0.85, its own guess 0.6, the shared one 0.55
    metrics = reconstruction_metrics(torch.rand_like(clips), clips)
    own = (10 * math.log10(1 / 0.25) + 10 * math.log10(1 / 0.0625)) / 2
    shared = (
        10 * math.log10(1 / ((0.55**2 + 0.45**2) / 2)) + 10 * math.log10(1 / ((0.2**2 + 0.3**2) / 2))
    ) / 2
    assert metrics["psnr_clip_colour"] == pytest.approx(own, rel=1e-5)
    assert metrics["psnr_mean_colour"] == pytest.approx(shared, rel=1e-5)


def test_ssim_pools_large_frames_by_the_rounded_ratio_to_256():
    assert [ssim_pooling(h, 999) for h in (11, 256, 383, 384, 640, 641, 1080)] == [1, 1, 1, 2, 2, 3, 4]
    # smooth content plus pixel noise: pooling averages the noise away, so it raises SSIM
    rows, cols = torch.meshgrid(torch.arange(384.0), torch.arange(400.0), indexing="ij")
    a = (0.8 * torch.sin(rows / 23) * torch.cos(cols / 31)).expand(1, 1, 3, 384, 400)
    b = (a + 0.3 * clips(3, shape=(1, 1, 3, 384, 400))).clamp(-1, 1)

    def pooled(x):  # 2x2 block means, written out
        return x.reshape(1, 1, 3, 192, 2, 200, 2).mean(dim=(4, 6))

    torch.testing.assert_close(ssim(a, b), ssim(pooled(a), pooled(b)))
    unpooled = ssim(a[..., :383, :], b[..., :383, :])  # 383 rows: scored as they are
    assert (ssim(a, b) - unpooled).item() > 0.05
