"""Pixel metrics of reconstructed clips: PSNR and SSIM, per frame, averaged over frames.

Clips are ``(B, F, 3, H, W)`` in [-1, 1] (the layout every tokenizer and de-tokenizer
takes and returns); both metrics score [0, 1] pixels, the prediction clamped first. The
definitions are VidTok's (seed-systems §a.4), so numbers compare with its published table:

* PSNR = -10 log10(MSE + 1e-8) per frame: a frame reproduced exactly scores 80 dB, not
  infinity, so one perfect frame cannot swamp a mean.
* SSIM (Wang et al. 2004): an 11x11 Gaussian window with sigma 1.5, K1 0.01, K2 0.03, valid
  window positions only, averaged over channels and positions. Frames whose shorter side is
  at least 384 pixels are first average-pooled by ``round(min(H, W) / 256)`` (the scale at
  which SSIM was designed to be read); smaller frames are scored as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from divot_llm.metrics.lpips import LPIPS

PSNR_EPS = 1e-8  # VidTok's: bounds a perfect frame at 80 dB
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
SSIM_SCALE = 256  # frames are pooled towards this shorter side before SSIM


def gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised Gaussian taps ``(size,)`` centred on the middle tap (kornia's layout for
    even sizes: centred between the two middle taps)."""
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    taps = torch.exp(-(x**2) / (2 * sigma**2))
    return taps / taps.sum()


def frames01(clips_bfchw: torch.Tensor) -> torch.Tensor:
    """``(B, F, 3, H, W)`` in [-1, 1] -> ``(B*F, 3, H, W)`` in [0, 1], fp32, clamped."""
    return ((clips_bfchw.float().clamp(-1, 1) + 1) / 2).flatten(0, 1)


def psnr_frames(pred_n3hw: torch.Tensor, target_n3hw: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each frame ``(N,)`` of ``(N, 3, H, W)`` frames in [0, 1]."""
    mse_n = (pred_n3hw - target_n3hw).pow(2).flatten(1).mean(dim=1)
    return -10 * torch.log10(mse_n + PSNR_EPS)


def ssim_pooling(height: int, width: int) -> int:
    """The average-pooling factor SSIM applies to ``height x width`` frames (1: none).
    Python's round, as VidTok: a shorter side of 384 pools by 2, 640 by 2, 641 by 3."""
    return max(1, round(min(height, width) / SSIM_SCALE))


def ssim_frames(pred_n3hw: torch.Tensor, target_n3hw: torch.Tensor) -> torch.Tensor:
    """SSIM of each frame ``(N,)`` of ``(N, 3, H, W)`` frames in [0, 1]; H and W (after the
    ``ssim_pooling``) must be at least 11."""
    x, y = pred_n3hw, target_n3hw
    pool = ssim_pooling(*x.shape[-2:])
    if pool > 1:
        x, y = F.avg_pool2d(x, pool), F.avg_pool2d(y, pool)
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs frames of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {tuple(x.shape[-2:])}"
        )
    channels = x.shape[1]
    g = gaussian_kernel1d(SSIM_WINDOW, SSIM_SIGMA, x.dtype, x.device)
    window = (g[:, None] * g[None, :]).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)

    def blur(z: torch.Tensor) -> torch.Tensor:  # weighted local mean, per channel
        return F.conv2d(z, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_x**2 + mu_y**2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    )
    return ssim_map.flatten(1).mean(dim=1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of each clip, averaged over its frames.

    Args:
        pred: ``(B, F, 3, H, W)`` in [-1, 1].
        target: same shape.

    Returns:
        ``(B,)`` PSNR.
    """
    return psnr_frames(frames01(pred), frames01(target)).view(pred.shape[0], -1).mean(dim=1)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM of each clip, averaged over its frames.

    Args:
        pred: ``(B, F, 3, H, W)`` in [-1, 1], H and W >= 11 (after ``ssim_pooling``).
        target: same shape.

    Returns:
        ``(B,)`` SSIM in [-1, 1].
    """
    return ssim_frames(frames01(pred), frames01(target)).view(pred.shape[0], -1).mean(dim=1)


def mean_colour_guess(clips_bfchw: torch.Tensor, per_clip: bool = False) -> torch.Tensor:
    """The flat guesses a reconstruction has to beat: every clip filled with the mean colour
    of all the clips (a guess that ignores which clip it is), or with its own mean colour
    (``per_clip``: a guess that knows each clip's palette but nothing of its layout)."""
    dims = (1, 3, 4) if per_clip else (0, 1, 3, 4)
    return clips_bfchw.float().mean(dim=dims, keepdim=True).expand_as(clips_bfchw)


def reconstruction_metrics(
    pred: torch.Tensor, target: torch.Tensor, lpips: LPIPS | None = None
) -> dict[str, float]:
    """Mean PSNR and SSIM over a batch of clips ``(B, F, 3, H, W)`` in [-1, 1], the PSNR of
    the flat guesses (``psnr_mean_colour``: the batch's mean colour; ``psnr_clip_colour``:
    each clip's own), and with an ``lpips`` module (``divot_llm.metrics.LPIPS``) the mean
    LPIPS of the frames, for logs and validation."""
    metrics = {
        "psnr": psnr(pred, target).mean().item(),
        "ssim": ssim(pred, target).mean().item(),
        "psnr_mean_colour": psnr(mean_colour_guess(target), target).mean().item(),
        "psnr_clip_colour": psnr(mean_colour_guess(target, per_clip=True), target).mean().item(),
    }
    if lpips is not None:
        with torch.no_grad():
            metrics["lpips"] = lpips.clips(pred, target).mean().item()
    return metrics
