"""Video -> tokenizer -> de-tokenizer -> video, with PSNR/SSIM against the input
(divot-reference §8.3: one de-tokenizer window -- 16 frames at 8 fps from the start, or
spread over a shorter video -- and the tokenizer sees frames 0, 4, 8, 12, 15)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from divot_llm.data.detok_examples import DetokExampleSpec, read_detok_video
from divot_llm.detokenizers.base import VideoDetokenizer
from divot_llm.detokenizers.training import tokenizer_features
from divot_llm.metrics import reconstruction_metrics
from divot_llm.tokenizers.base import VideoTokenizer


@dataclass
class Reconstruction:
    input: torch.Tensor  # (F, 3, S, S) in [-1, 1]
    output: torch.Tensor  # (F, 3, S, S) in [-1, 1]
    psnr: float
    ssim: float


def reconstruct(
    path: str | os.PathLike,
    video_tokenizer: VideoTokenizer,
    detokenizer: VideoDetokenizer,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 42,
) -> Reconstruction:
    """Reconstruct one video's de-tokenizer window; ``seed`` fixes the window start and the sampler."""
    # The training window sampler, seeded: its start falls within the video's first 1/fps s.
    spec = DetokExampleSpec.of(detokenizer)
    clip, _ = read_detok_video(path, spec, np.random.default_rng(seed))  # (F, 3, S, S)
    feats = tokenizer_features(video_tokenizer, clip.unsqueeze(0))  # the tokenizer resizes to its own size
    output = detokenizer.decode(feats, steps=steps, guidance=guidance, seed=seed)[0].cpu()
    metrics = reconstruction_metrics(output.unsqueeze(0), clip.unsqueeze(0))
    return Reconstruction(clip, output, metrics["psnr"], metrics["ssim"])
