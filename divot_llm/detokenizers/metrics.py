"""Reconstruction metrics for decoded clips: PSNR and SSIM, per frame, averaged.

Clips are ``(B, F, 3, H, W)`` in [-1, 1] (the de-tokenizer's output layout); both metrics
work on [0, 1] pixels. LPIPS is not computed here: it needs pretrained VGG/AlexNet weights,
which cannot be fetched at run time on the project's machines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from divot_llm.tokenizers.preprocess import gaussian_kernel1d

SSIM_WINDOW = 11  # Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2


def _frames01(clips_bfchw: torch.Tensor) -> torch.Tensor:
    """``(B, F, 3, H, W)`` in [-1, 1] -> ``(B*F, 3, H, W)`` in [0, 1], fp32."""
    return ((clips_bfchw.float().clamp(-1, 1) + 1) / 2).flatten(0, 1)


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each clip, averaged over its frames.

    Args:
        pred: ``(B, F, 3, H, W)`` in [-1, 1].
        target: same shape.

    Returns:
        ``(B,)`` PSNR (inf for a frame reproduced exactly).
    """
    batch = pred.shape[0]
    mse_n = (_frames01(pred) - _frames01(target)).pow(2).flatten(1).mean(dim=1)
    return (10 * torch.log10(1.0 / mse_n)).view(batch, -1).mean(dim=1)


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity of each clip (Gaussian window, valid positions only, mean over
    channels, positions and frames).

    Args:
        pred: ``(B, F, 3, H, W)`` in [-1, 1], with H, W >= 11.
        target: same shape.

    Returns:
        ``(B,)`` SSIM in [-1, 1].
    """
    batch = pred.shape[0]
    x, y = _frames01(pred), _frames01(target)
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
    return ssim_map.flatten(1).mean(dim=1).view(batch, -1).mean(dim=1)


def mean_colour_guess(clips_bfchw: torch.Tensor, per_clip: bool = False) -> torch.Tensor:
    """The flat guesses a reconstruction has to beat: every clip filled with the mean colour
    of all the clips (a guess that ignores which clip it is), or with its own mean colour
    (``per_clip``: a guess that knows each clip's palette but nothing of its layout)."""
    dims = (1, 3, 4) if per_clip else (0, 1, 3, 4)
    return clips_bfchw.float().mean(dim=dims, keepdim=True).expand_as(clips_bfchw)


def reconstruction_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean PSNR and SSIM over a batch of clips, and the PSNR of the flat guesses
    (``psnr_mean_colour``: the batch's mean colour; ``psnr_clip_colour``: each clip's own),
    for logs and validation."""
    return {
        "psnr": psnr(pred, target).mean().item(),
        "ssim": ssim(pred, target).mean().item(),
        "psnr_mean_colour": psnr(mean_colour_guess(target), target).mean().item(),
        "psnr_clip_colour": psnr(mean_colour_guess(target, per_clip=True), target).mean().item(),
    }
