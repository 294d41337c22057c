"""Fréchet video distance (Unterthiner et al. 2018) with a user-supplied I3D.

The detector is a TorchScript file called the way StyleGAN-V and the FVD code built on it
call ``i3d_torchscript.pt`` (the Kinetics-400 I3D of the reference TensorFlow FVD):
``detector(x, rescale=False, resize=False, return_features=True)`` on ``(B, 3, T, 224,
224)`` float clips in [-1, 1], returning ``(B, D)`` features (D = 400 for that file). We
resize and crop ourselves (``i3d_input``), as those wrappers do with ``rescale`` and
``resize`` off: shorter side to 224 (bilinear, long side rounded up), centre crop.

The distance between two sets of features is
``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with unbiased covariances, in
float64. The trace of the matrix square root is that of ``(A S_b A)^(1/2)`` with
``A = S_a^(1/2)``: a symmetric matrix with the same eigenvalues as ``S_a S_b``, so two
symmetric eigendecompositions give it (no scipy).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

I3D_SIZE = 224
I3D_MIN_FRAMES = 10  # fewer frames than I3D's temporal reach: the FVD wrappers refuse them


def load_i3d(path: str | os.PathLike, device: torch.device | str = "cpu") -> torch.jit.ScriptModule:
    """The TorchScript I3D at ``path`` (e.g. StyleGAN-V's ``i3d_torchscript.pt``), in
    eval mode on ``device``.

    Raises:
        ValueError: the file is not a TorchScript module.
    """
    try:
        return torch.jit.load(os.fspath(path), map_location=device).eval()
    except RuntimeError as exc:
        raise ValueError(f"{path}: not a TorchScript I3D ({exc})") from exc


def i3d_input(clips_bfchw: torch.Tensor) -> torch.Tensor:
    """Clips ``(B, F, 3, H, W)`` in [-1, 1] -> the detector's ``(B, 3, F, 224, 224)`` in
    [-1, 1], fp32: shorter side resized to 224 (bilinear, no antialias; the other side
    rounded up), then the centre 224x224."""
    batch, frames, _, height, width = clips_bfchw.shape
    scale = I3D_SIZE / min(height, width)
    size = (I3D_SIZE, math.ceil(width * scale)) if height < width else (math.ceil(height * scale), I3D_SIZE)
    x = clips_bfchw.float().clamp(-1, 1).flatten(0, 1)
    if size != (height, width):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    top, left = (size[0] - I3D_SIZE) // 2, (size[1] - I3D_SIZE) // 2
    x = x[:, :, top : top + I3D_SIZE, left : left + I3D_SIZE]
    return x.view(batch, frames, 3, I3D_SIZE, I3D_SIZE).transpose(1, 2).contiguous()


@torch.no_grad()
def i3d_features(detector: torch.nn.Module, clips_bfchw: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Detector features ``(B, D)`` float64 on the CPU of clips ``(B, F, 3, H, W)`` in
    [-1, 1] with F >= ``I3D_MIN_FRAMES``, ``batch_size`` clips per call, on the device of
    the detector's parameters."""
    if clips_bfchw.shape[1] < I3D_MIN_FRAMES:
        raise ValueError(f"I3D needs clips of at least {I3D_MIN_FRAMES} frames, got {clips_bfchw.shape[1]}")
    device = next(iter(detector.parameters()), torch.empty(0)).device
    feats = []
    for start in range(0, clips_bfchw.shape[0], batch_size):
        x = i3d_input(clips_bfchw[start : start + batch_size]).to(device)
        feats.append(detector(x, rescale=False, resize=False, return_features=True).double().cpu())
    return torch.cat(feats)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative
    eigenvalues from rounding clamped to 0)."""
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)`` and
    ``(M, D)`` (see the module docstring), in float64.

    Raises:
        ValueError: a set of fewer than 2 rows (no covariance) or different widths.
    """
    if min(feats_a.shape[0], feats_b.shape[0]) < 2 or feats_a.shape[1] != feats_b.shape[1]:
        raise ValueError(
            f"Fréchet distance needs >= 2 feature rows of one width per set, got "
            f"{tuple(feats_a.shape)} and {tuple(feats_b.shape)}"
        )
    a, b = feats_a.double(), feats_b.double()
    mean_term = (a.mean(dim=0) - b.mean(dim=0)).pow(2).sum()
    width = a.shape[1]
    cov_a, cov_b = torch.cov(a.T).view(width, width), torch.cov(b.T).view(width, width)  # unbiased
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    return float(mean_term + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_root)
