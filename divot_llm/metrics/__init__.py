"""Reconstruction metrics with VidTok's definitions (seed-systems §a.4): PSNR and SSIM
(``quality``), LPIPS with local VGG16 + head weights (``lpips``) and FVD with a local
TorchScript I3D (``fvd``). A bottom-layer package: tokenizers, de-tokenizers, training,
inference and export all score with it."""

from divot_llm.metrics.fvd import frechet_distance, i3d_features, i3d_input, load_i3d
from divot_llm.metrics.lpips import LPIPS, load_lpips
from divot_llm.metrics.quality import mean_colour_guess, psnr, reconstruction_metrics, ssim

__all__ = [
    "LPIPS",
    "frechet_distance",
    "i3d_features",
    "i3d_input",
    "load_i3d",
    "load_lpips",
    "mean_colour_guess",
    "psnr",
    "reconstruction_metrics",
    "ssim",
]
