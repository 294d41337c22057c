"""A contact sheet: one row per sample showing the frames training would see.

Each video goes through the training sampler (``sample_video_clips`` with one clip, the
generation setting), so a row is that clip's 5 frames after the resize/crop transform;
an image is the static clip training makes of it. Used by ``divot-data inspect``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from divot_llm.data.clip_sampling import image_clip, model_pixels_to_uint8, sample_video_clips

LABEL_WIDTH = 150  # px left of each row for the sample's name
GAP = 4  # px between cells


def sample_row(media: bytes, is_video: bool, rng: np.random.Generator, size: int) -> np.ndarray:
    """The frames of one sampled clip as uint8 (5, size, size, 3)."""
    clip = (
        sample_video_clips(media, 1, rng, image_size=size) if is_video else image_clip(media, image_size=size)
    )
    return model_pixels_to_uint8(clip[0])


def compose_sheet(rows: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Grid image: per row a label then the row's frames left to right."""
    frames_per_row = max(len(frames) for _, frames in rows)
    size = rows[0][1].shape[1]
    width = LABEL_WIDTH + frames_per_row * (size + GAP)
    sheet = Image.new("RGB", (width, len(rows) * (size + GAP) + GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, frames) in enumerate(rows):
        top = GAP + r * (size + GAP)
        draw.text((GAP, top + size // 2 - 6), label[:24], fill="black")
        for c, frame in enumerate(frames):
            sheet.paste(Image.fromarray(frame), (LABEL_WIDTH + c * (size + GAP), top))
    return sheet
