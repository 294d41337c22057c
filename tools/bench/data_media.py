"""What ``tools/bench/data.py`` and its mix and stream parts share: synthetic media, the
two loaders compared (the pipeline and the naive loader) and the interleaved best-of timer.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from divot_llm.data.clip_sampling import (
    clip_positions,
    plan_windows,
    probe_container,
    sample_video_clips,
    to_model_pixels,
)
from divot_llm.data.images import open_rgb
from divot_llm.data.video_codec import display_rgb, encode_video

DEFAULT_BPP = 0.1  # Apple's HLS H.264 ladder at 270p-540p, see data.py's docstring
FRAMES_PER_CLIP = 5


# ------------------------------------------------------------------------- media


class TexturedFrames:
    """Frames of a slow pan over a blocky random texture with a moving square and
    per-frame noise, rendered on demand (a 60-s 480p video would not fit in memory as one
    array). Indexable, so ``encode_video`` can iterate it."""

    GRAIN = 24  # per-frame noise of +-24 levels: detail enough that x264 spends the bitrate it is given

    def __init__(self, num_frames: int, height: int, width: int, seed: int):
        rng = np.random.default_rng(seed)
        blocks = rng.integers(0, 256, (height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
        self.texture = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))  # 2x the width
        self.num_frames, self.height, self.width = num_frames, height, width
        self.seed = seed

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_frames:
            raise IndexError(i)  # ends iteration
        x = i % self.width  # pan one pixel per frame, wrapping
        frame = self.texture[: self.height, x : x + self.width].astype(np.int16)
        side = self.height // 4
        top, left = (i * 3) % (self.height - side), (i * 5) % (self.width - side)
        frame[top : top + side, left : left + side] = (255, 255, 255)
        rng = np.random.default_rng([self.seed, i])
        frame += rng.integers(-self.GRAIN, self.GRAIN + 1, frame.shape, dtype=np.int16)
        return np.clip(frame, 0, 255).astype(np.uint8)


def make_video(height: int, duration_s: float, fps: int, seed: int, bpp: float = DEFAULT_BPP) -> bytes:
    """A 16:9 h264 video encoded at an average of ``bpp`` bits per displayed pixel."""
    width = round(height * 16 / 9 / 2) * 2  # even, for yuv420p
    frames = TexturedFrames(round(duration_s * fps), height, width, seed)
    return encode_video(frames, fps, "h264", bit_rate=round(bpp * width * height * fps))


def make_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """A JPEG photo stand-in: one frame of the same noisy texture (detail a photo has)."""
    buffer = io.BytesIO()
    Image.fromarray(TexturedFrames(1, height, width, seed)[0]).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# --------------------------------------------------------------------- the loaders


def pipeline(data: bytes | Path, num_clips: int, rng: np.random.Generator, kernel: str = "pil") -> torch.Tensor:
    """(C, 5, 3, 256, 256) uint8, as the training loader's workers deliver them (resized
    with ``kernel``, ``data.resize_kernel``)."""
    return sample_video_clips(data, num_clips, rng, dense=False, as_uint8=True, resize_kernel=kernel)


def baseline(data: bytes | Path, num_clips: int, rng: np.random.Generator) -> torch.Tensor:
    """Naive loading: decode every frame to RGB (PyAV's default decoder settings, as
    ``video_codec.decode_video``, kept as a list: nothing here needs them stacked), then pick
    what the same rules choose, resized with PIL as the reference does. (C, 5, 3, 256, 256)
    in [-1, 1]: for constant-frame-rate videos the pixels of ``pipeline`` with the ``pil``
    kernel scaled by ``uint8_to_model_pixels`` (with ``torch``, within one level of them)."""
    with av.open(io.BytesIO(data) if isinstance(data, bytes) else str(data)) as container:
        info = probe_container(container)  # one open, headers first, as the pipeline's
        windows = plan_windows(info.num_frames, info.fps, num_clips, rng, dense=False)
        indices = windows[:, clip_positions()]  # (C, 5)
        frames = [display_rgb(frame) for frame in container.decode(video=0)]
    pixels = to_model_pixels([frames[min(i, len(frames) - 1)] for i in indices.ravel()])
    return pixels.reshape(*indices.shape, *pixels.shape[1:])


def naive_image_clip(data: bytes | Path) -> torch.Tensor:
    """Naive loading of an image sample, as the reference does it: the image transformed
    to float [-1, 1] in the worker and repeated into a static clip, (1, 5, 3, 256, 256)."""
    pixels = to_model_pixels([np.asarray(open_rgb(data))])  # (1, 3, 256, 256)
    return pixels.expand(FRAMES_PER_CLIP, -1, -1, -1).unsqueeze(0).clone()


# -------------------------------------------------------------------------- timing


@dataclass
class Timing:
    seconds: float  # summed over inputs (clip choices, samples, passes), the best call of each
    clips: int  # clips one call of each input delivers, summed over inputs

    def __add__(self, other: Timing) -> Timing:
        return Timing(self.seconds + other.seconds, self.clips + other.clips)

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds

    @property
    def frames_per_s(self) -> float:
        return FRAMES_PER_CLIP * self.clips / self.seconds


NO_TIME = Timing(0.0, 0)


Clock = Callable[[], float]  # seconds: time.perf_counter (wall) or time.process_time (CPU)


def race(calls: dict[str, Callable[[], int]], rounds: int, clock: Clock = time.perf_counter) -> dict[str, Timing]:
    """Each contender's best of ``rounds`` calls on one input, and the clips that call
    delivered (each returns how many it delivered): every contender gets as many calls.
    Calls alternate between contenders, in reverse order every other round, so none always
    runs right after another (the naive loader leaves gigabytes freed behind it).
    ``clock``: wall time, or CPU time in a process pinned to one core (see ``data.py``'s
    docstring)."""
    best = {name: Timing(np.inf, 0) for name in calls}
    names = list(calls)
    for round_index in range(rounds):
        for name in names if round_index % 2 == 0 else names[::-1]:
            start = clock()
            clips = calls[name]()
            seconds = clock() - start
            if seconds < best[name].seconds:
                best[name] = Timing(seconds, clips)
    return best
