"""Writing model outputs: clips in [-1, 1] -> mp4 and gif files and PNG frame strips
(inference, ``divot_llm.infer``, and the samples a training run writes, ``divot_llm.train``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from divot_llm.data.clip_sampling import model_pixels_to_uint8
from divot_llm.data.video_codec import encode_video


def write_mp4(path: str | os.PathLike, clip_fchw: torch.Tensor, fps: float) -> Path:
    """An h264 mp4 of one clip (odd sizes are padded by one pixel: yuv420p needs even)."""
    frames = model_pixels_to_uint8(clip_fchw)
    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, fps, "h264"))
    return path


def write_gif(path: str | os.PathLike, clip_fchw: torch.Tensor, fps: float) -> Path:
    """An animated gif of one clip (PIL: an adaptive palette per frame, looping)."""
    images = [Image.fromarray(frame) for frame in model_pixels_to_uint8(clip_fchw)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0, optimize=False
    )
    return path


def frame_strip(rows_fchw: list[torch.Tensor], max_frames: int = 8, gap: int = 2) -> Image.Image:
    """One row per clip (e.g. input above, reconstruction below), ``max_frames`` evenly
    spaced frames each, on a white background."""
    rows = [model_pixels_to_uint8(r) for r in rows_fchw]
    count = min(max_frames, min(len(r) for r in rows))
    picks = np.linspace(0, min(len(r) for r in rows) - 1, count).round().astype(int)
    height, width = rows[0].shape[1:3]
    sheet = np.full((len(rows) * (height + gap) - gap, count * (width + gap) - gap, 3), 255, dtype=np.uint8)
    for r, frames in enumerate(rows):
        for c, index in enumerate(picks):
            y, x = r * (height + gap), c * (width + gap)
            sheet[y : y + height, x : x + width] = frames[index]
    return Image.fromarray(sheet)


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe version of a caption (``a red circle`` -> ``a_red_circle``)."""
    cleaned = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()
    return cleaned[:limit] or "output"
