"""Tiny videos with known motion for the motion-vector tests: a noise-textured square on a
flat background moving a whole number of pixels per frame (textured, so that the
encoder's motion search finds the true displacement)."""

from __future__ import annotations

import numpy as np

from divot_llm.data.video_codec import encode_video

SIZE = (96, 64)  # (width, height): 6 x 4 macroblocks
SIDE = 32  # square side, px
START = 8  # square's top-left corner in frame 0, px


def moving_square_frames(dx: int, dy: int, frames: int = 24, size=SIZE) -> np.ndarray:
    """(T, H, W, 3) uint8: the square moves (dx, dy) px per frame."""
    width, height = size
    if START + SIDE + dx * (frames - 1) > width or START + SIDE + dy * (frames - 1) > height:
        raise ValueError("the square would leave the frame")
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    video = np.full((frames, height, width, 3), 60, dtype=np.uint8)
    for t in range(frames):
        x, y = START + dx * t, START + dy * t
        video[t, y : y + SIDE, x : x + SIDE] = texture
    return video


def moving_square(dx: int, dy: int, frames: int = 24, fps: float = 6, size=SIZE, **kwargs) -> bytes:
    """An h264 video of ``moving_square_frames`` at ``fps``."""
    return encode_video(moving_square_frames(dx, dy, frames, size), fps, "h264", **kwargs)
