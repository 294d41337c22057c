"""De-tokenizer windows: whole clips of ``num_frames`` frames at ``fps`` (and a caption),
the training data of the de-tokenizer stages (detok, tokenizer, detok_adapt).

A window is what the de-tokenizer decodes -- for Divot 16 frames at 8 fps, 256x256 (2 s),
the tokenizer seeing 5 of them -- so it is sampled with the LLM pipeline's rules for one
clip (``plan_windows``: a random window in a long video, the whole video compressed into
one window when it is shorter) and the same pixel transform (``to_model_pixels``). A still
image becomes a window of one repeated frame.

Everything else is the LLM loader's: sources (jsonl / tar shards), rank x worker
sharding, the weighted mixer, the exact resumable state and the bad-data skip counts
(``loader.build_loader(..., windows=WindowSpec(...))``). Batches are::

    video        (B, F, 3, S, S) float32 in [-1, 1]
    frame_times  (B, F) float64, seconds from the first frame of each video (0 for images)
    captions     list of B captions (one drawn per sample and epoch)
    sources, keys
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from divot_llm.data.images import open_rgb
from divot_llm.data.loader import (
    DivotLoader,
    LoaderSpec,
    SourceSpec,
    build_loader,
    loader_spec,
    sample_rngs,
)
from divot_llm.data.sources import RawSample
from divot_llm.data.video import (
    MediaError,
    image_clip,
    plan_windows,
    probe_video,
    read_frames_at,
    to_model_pixels,
)


@dataclass(frozen=True)
class WindowSpec:
    """The window a de-tokenizer trains on: ``num_frames`` frames sampled at ``fps``,
    ``image_size`` pixels square (its ``num_frames``, ``fps``, ``image_size``)."""

    num_frames: int
    fps: float
    image_size: int

    @classmethod
    def of(cls, detokenizer: Any) -> WindowSpec:
        """The window of a de-tokenizer module or its config node."""
        return cls(int(detokenizer.num_frames), float(detokenizer.fps), int(detokenizer.image_size))

    def example(self, raw: RawSample, source: SourceSpec, seed: int, epoch: int) -> dict:
        return window_example(raw, source, self, seed, epoch)

    def collate(self, examples: list[dict]) -> dict:
        return collate_windows(examples)


# ----------------------------------------------------------------------- sampling


def window_frame_indices(
    num_frames: int, video_fps: float, window: WindowSpec, rng: np.random.Generator
) -> np.ndarray:
    """Frame indices ``(F,)`` of one window: ``window.num_frames`` frames at ``window.fps``
    from a random start, or spread over the whole video when it is shorter."""
    windows_cf = plan_windows(
        num_frames, video_fps, 1, rng, dense=False, window=window.num_frames, sample_fps=window.fps
    )
    return windows_cf[0]


def read_window(
    media: bytes | str | os.PathLike,
    window: WindowSpec,
    rng: np.random.Generator,
    min_resolution: int = 0,
    min_aspect_ratio: float = 0.0,
    threads: int = 0,
) -> tuple[torch.Tensor, np.ndarray]:
    """One window of a video: ``(F, 3, S, S)`` pixels in [-1, 1] and the frame times ``(F,)``.

    Raises:
        MediaError: unusable video (corrupt, no frames, too small, too elongated).
    """
    info = probe_video(media)
    short, long = sorted((info.width, info.height))
    if short < min_resolution:
        raise MediaError("too_small", f"{info.width}x{info.height} < {min_resolution}")
    if short / long < min_aspect_ratio:
        raise MediaError("bad_aspect_ratio", f"{info.width}x{info.height}")
    times_f = window_frame_indices(info.num_frames, info.fps, window, rng) / info.fps
    frames = read_frames_at(media, times_f, threads=threads)
    return to_model_pixels(frames, window.image_size), times_f


def still_window(media: bytes | os.PathLike, window: WindowSpec, source: SourceSpec) -> torch.Tensor:
    """An image as a static window ``(F, 3, S, S)``, with the source's size filters."""
    image = open_rgb(media)
    short, long = sorted(image.size)
    if short < source.min_resolution:
        raise MediaError("too_small", f"{image.size[0]}x{image.size[1]} < {source.min_resolution}")
    if short / long < source.min_aspect_ratio:
        raise MediaError("bad_aspect_ratio", f"{image.size[0]}x{image.size[1]}")
    return image_clip(image, window.num_frames, window.image_size)[0]


def window_example(raw: RawSample, source: SourceSpec, window: WindowSpec, seed: int, epoch: int) -> dict:
    """One window and a caption of a raw sample. Window position and caption depend only
    on (seed, sample, epoch), as in the LLM loader (``sample_rngs``).

    Raises:
        MediaError: unusable media, or a sample without a caption (QA sources).
    """
    clip_rng, text_rng = sample_rngs(seed, raw.key, epoch)
    if not raw.captions:
        raise MediaError("no_caption", "de-tokenizer windows need caption sources")
    if raw.media_kind == "image":
        video_fchw = still_window(raw.media, window, source)
        times_f = np.zeros(window.num_frames)
    else:
        # one decoder thread per dataloader worker: the workers already use the cores
        threads = 1 if torch.utils.data.get_worker_info() is not None else 0
        video_fchw, times_f = read_window(
            raw.media, window, clip_rng, source.min_resolution, source.min_aspect_ratio, threads
        )
    return {
        "video": video_fchw,
        "frame_times": torch.from_numpy(np.asarray(times_f, dtype=np.float64)),
        "caption": raw.captions[int(text_rng.integers(len(raw.captions)))],
        "source": raw.source,
        "key": raw.key,
    }


def collate_windows(examples: list[dict]) -> dict:
    """Stack windows into a batch (every window has the same shape)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    return {
        "video": torch.stack([e["video"] for e in examples]),
        "frame_times": torch.stack([e["frame_times"] for e in examples]),
        "captions": [e["caption"] for e in examples],
        "sources": [e["source"] for e in examples],
        "keys": [e["key"] for e in examples],
    }


# ----------------------------------------------------------------------- building


def window_loader_spec(data_cfg: Any, window: WindowSpec, split: str = "train") -> LoaderSpec:
    """``loader_spec`` of ``cfg.data`` for de-tokenizer windows."""
    return loader_spec(data_cfg, 0, window.num_frames, window.image_size, split, windows=window)


def build_window_loader(
    data_cfg: Any, window: WindowSpec, rank: int = 0, world_size: int = 1, split: str = "train"
) -> DivotLoader:
    """The window loader of one rank for ``cfg.data`` (``split="val"``: ``val_sources``,
    one pass): the LLM loader (sharding, mixing, resumable state, skip counts) yielding
    window batches.

    Raises:
        DataError / ValueError: see ``loader.loader_spec``.
    """
    return build_loader(data_cfg, None, 0, window.num_frames, window.image_size, rank, world_size, split,
                        windows=window)  # fmt: skip
