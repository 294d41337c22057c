"""Video -> tokenizer -> de-tokenizer -> video, with PSNR/SSIM against the input
(divot-reference §8.3: 16 frames at 8 fps from the start, the tokenizer sees frames
0, 4, 8, 12, 15)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from divot_llm.data.video import probe_video, read_frames_at, to_model_pixels
from divot_llm.detokenizers.metrics import reconstruction_metrics
from divot_llm.detokenizers.training import tokenizer_features


def clip_times(num_source_frames: int, source_fps: float, num_frames: int, fps: float) -> np.ndarray:
    """Times (s) of the clip's frames: ``num_frames`` at ``fps`` from the start, or -- for
    a video shorter than that -- spread evenly over it (the reference's ``len // 16``)."""
    duration = num_source_frames / source_fps
    if duration >= num_frames / fps:
        return np.arange(num_frames) / fps
    return np.linspace(0.0, duration, num_frames, endpoint=False)


def read_clip(path: str | os.PathLike, num_frames: int, fps: float, size: int) -> torch.Tensor:
    """``(F, 3, size, size)`` in [-1, 1]: the de-tokenizer's input window of a video."""
    info = probe_video(path)
    return to_model_pixels(read_frames_at(path, clip_times(info.num_frames, info.fps, num_frames, fps)), size)


@dataclass
class Reconstruction:
    input: torch.Tensor  # (F, 3, S, S) in [-1, 1]
    output: torch.Tensor  # (F, 3, S, S) in [-1, 1]
    psnr: float
    ssim: float


def reconstruct(
    path: str | os.PathLike,
    video_tokenizer,
    detokenizer,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 42,
) -> Reconstruction:
    clip = read_clip(path, detokenizer.num_frames, detokenizer.fps, detokenizer.image_size)
    video_bfchw = clip.unsqueeze(0).to(video_tokenizer.device)
    if video_tokenizer.input_size != detokenizer.image_size:  # the tokenizer sees its own size
        video_bfchw = (
            torch.nn.functional.interpolate(
                clip, size=video_tokenizer.input_size, mode="bilinear", antialias=True, align_corners=False
            )
            .unsqueeze(0)
            .to(video_tokenizer.device)
        )
    feats = tokenizer_features(video_tokenizer, video_bfchw)
    output = detokenizer.decode(feats, steps=steps, guidance=guidance, seed=seed)[0].cpu()
    metrics = reconstruction_metrics(output.unsqueeze(0), clip.unsqueeze(0))
    return Reconstruction(clip, output, metrics["psnr"], metrics["ssim"])
