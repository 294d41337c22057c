"""CLIP input preprocessing inside the tokenizer: resize, then CLIP mean/std.

The reference resizes with ``kornia.geometry.resize(x, size, interpolation="bicubic",
align_corners=True, antialias=True)``. Kornia's antialiasing is *not* torch's
``antialias=True``: before a downscale it blurs with a Gaussian (sigma from the scale
factor, reflect padding) and then interpolates plainly. The features the released weights
expect depend on it, so it is reproduced here in plain torch (no kornia dependency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from divot_llm.metrics.quality import gaussian_kernel1d  # one Gaussian: SSIM's window uses it too

# OpenAI CLIP normalisation, also used by the LAION open_clip models.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def gaussian_blur(x_bchw: torch.Tensor, kernel_hw: tuple[int, int], sigma_hw: tuple[float, float]) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding, shape preserved."""
    for dim, size, sigma in zip((2, 3), kernel_hw, sigma_hw, strict=True):  # along H, then W
        taps = gaussian_kernel1d(size, sigma, torch.float64, torch.device("cpu")).tolist()
        front, rear = (size - 1) // 2, (size - 1) - (size - 1) // 2
        padded = F.pad(x_bchw, (0, 0, front, rear) if dim == 2 else (front, rear, 0, 0), mode="reflect")
        x_bchw = _weighted_shifts(padded, dim, taps)
    return x_bchw


def _weighted_shifts(padded: torch.Tensor, dim: int, taps: list[float]) -> torch.Tensor:
    """A 1-D correlation along ``dim`` as a sum of shifted views. The same arithmetic as a
    depthwise conv2d, but CPU conv2d with groups is ~15x slower at these sizes, and the blur
    runs on every clip the tokenizer encodes."""
    length = padded.shape[dim] - (len(taps) - 1)
    out = padded.narrow(dim, 0, length) * taps[0]
    for shift, tap in enumerate(taps[1:], start=1):
        out.add_(padded.narrow(dim, shift, length), alpha=tap)
    return out


def resize_antialiased(x_bchw: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize with ``align_corners=True`` and kornia-style antialiasing.

    Same size is a no-op; a Gaussian blur precedes the interpolation only when at least
    one side shrinks. Sigma and kernel size follow kornia (itself following skimage).
    """
    height, width = x_bchw.shape[-2:]
    if (height, width) == tuple(size_hw):
        return x_bchw
    factors = (height / size_hw[0], width / size_hw[1])
    if max(factors) > 1:
        sigmas = tuple(max((f - 1.0) / 2.0, 0.001) for f in factors)
        kernel = tuple(int(max(4.0 * s, 3)) for s in sigmas)
        kernel = tuple(k + 1 if k % 2 == 0 else k for k in kernel)  # odd: centred taps
        x_bchw = gaussian_blur(x_bchw, kernel, sigmas)
    return F.interpolate(x_bchw, size=tuple(size_hw), mode="bicubic", align_corners=True)


def clip_preprocess(frames_bchw: torch.Tensor, image_size: int) -> torch.Tensor:
    """Frames in [-1, 1] -> CLIP pixels ``(B, 3, image_size, image_size)`` in fp32.

    Computed in fp32 whatever the input dtype: the normalisation constants and bicubic
    taps lose visible precision in bf16.
    """
    x = resize_antialiased(frames_bchw.float(), (image_size, image_size))
    x = (x + 1.0) / 2.0
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
