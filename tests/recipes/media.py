"""Tiny real media files for the recipe tests: h264 videos of the synthetic scenes and
jpg/png images, small enough that a whole test set encodes in well under a second."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image

from divot_llm.data.synthetic import render_video, sample_video_spec
from divot_llm.data.video_codec import encode_video


def write_video(path: Path, seed: int, duration_s: float = 2.0, fps: int = 8, size=(64, 48)) -> float:
    """Encode a moving-shape h264 video at ``path``; returns its duration in seconds."""
    spec = dataclasses.replace(
        sample_video_spec(seed, "train", seed),
        width=size[0], height=size[1], fps=fps, duration_s=duration_s, codec="h264", variable_frame_rate=False,
    )  # fmt: skip
    frames, _ = render_video(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames, fps, "h264"))
    return len(frames) / fps


def write_image(path: Path, seed: int, size=(40, 30)) -> bytes:
    """A noisy image saved in the format its suffix names; returns the file's bytes."""
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG" if path.suffix == ".png" else "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def truncate(path: Path, keep: float = 0.3) -> None:
    """Cut a file short, like an interrupted download."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
