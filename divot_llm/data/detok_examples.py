"""De-tokenizer examples: whole videos of ``num_frames`` frames at ``fps`` with a caption,
the training data of the de-tokenizer stages (detok, tokenizer, detok_adapt).

The video is what the de-tokenizer decodes -- for Divot 16 frames at 8 fps, 256x256
(2 s), the tokenizer seeing 5 of them -- so it is sampled with the LLM pipeline's rules
for the frame window of one clip (``plan_windows``: a random window in a long video, the
whole video compressed into one window when it is shorter) and the same pixel transform
(``to_model_pixels``). A still image becomes a video of one repeated frame.

Everything else is the LLM loader's: sources (jsonl / tar shards), rank x worker
sharding, the weighted mixer, the exact resumable state and the bad-data skip counts
(``loader.build_loader(..., example_kind=DetokExampleSpec(...))``). Batches are::

    video        (B, F, 3, S, S) float32 in [-1, 1]
    frame_times  (B, F) float64, seconds from the first frame of each video (0 for images)
    captions     list of B captions (one drawn per sample and epoch)
    sources, keys
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
import torch

from divot_llm.config.schema import DataConfig, SourceConfig
from divot_llm.data.clip_sampling import (
    check_media_size,
    decoder_threads,
    image_clip,
    plan_windows,
    probe_video,
    read_frames_at,
    to_model_pixels,
)
from divot_llm.data.errors import MediaError
from divot_llm.data.loader import DivotLoader, LoaderSpec, build_loader, loader_spec, sample_rngs
from divot_llm.data.sources import RawSample


class VideoFormat(Protocol):
    """What a de-tokenizer decodes (its module's properties)."""

    @property
    def num_frames(self) -> int: ...
    @property
    def fps(self) -> float: ...
    @property
    def image_size(self) -> int: ...


@dataclass(frozen=True)
class DetokExampleSpec:
    """The video a de-tokenizer trains on: ``num_frames`` frames sampled at ``fps``,
    ``image_size`` pixels square (its ``num_frames``, ``fps``, ``image_size``). The
    loader's ``example_kind`` for the de-tokenizer stages."""

    num_frames: int
    fps: float
    image_size: int
    needs_text: ClassVar[bool] = True  # a caption per video (vidtok_csv sources have none)

    @classmethod
    def of(cls, detokenizer: VideoFormat) -> DetokExampleSpec:
        """The examples of a de-tokenizer."""
        return cls(detokenizer.num_frames, detokenizer.fps, detokenizer.image_size)

    def example(self, raw: RawSample, source: SourceConfig, seed: int, epoch: int) -> dict:
        return detok_example(raw, source, self, seed, epoch)

    def collate(self, examples: list[dict]) -> dict:
        return collate_detok_examples(examples)


# ----------------------------------------------------------------------- sampling


def detok_frame_indices(
    num_frames: int, video_fps: float, spec: DetokExampleSpec, rng: np.random.Generator
) -> np.ndarray:
    """Frame indices ``(F,)`` of one de-tokenizer video: ``spec.num_frames`` frames at
    ``spec.fps`` from a random start, or spread over the whole video when it is shorter."""
    windows_cf = plan_windows(
        num_frames, video_fps, 1, rng, dense=False, window=spec.num_frames, sample_fps=spec.fps
    )
    return windows_cf[0]


def read_detok_video(
    media: bytes | str | os.PathLike,
    spec: DetokExampleSpec,
    rng: np.random.Generator,
    min_resolution: int = 0,
    min_aspect_ratio: float = 0.0,
    threads: int = 0,
) -> tuple[torch.Tensor, np.ndarray]:
    """One de-tokenizer video from a video file: ``(F, 3, S, S)`` pixels in [-1, 1] and
    the frame times ``(F,)``.

    Raises:
        MediaError: unusable video (corrupt, no frames, too small, too elongated).
    """
    info = probe_video(media)
    check_media_size(info.width, info.height, min_resolution, min_aspect_ratio)
    times_f = detok_frame_indices(info.num_frames, info.fps, spec, rng) / info.fps
    frames = read_frames_at(media, times_f, threads=threads)
    return to_model_pixels(frames, spec.image_size), times_f


def still_detok_video(
    media: bytes | os.PathLike, spec: DetokExampleSpec, source: SourceConfig
) -> torch.Tensor:
    """An image as a static de-tokenizer video ``(F, 3, S, S)``, with the source's size filters."""
    clip = image_clip(
        media,
        spec.num_frames,
        spec.image_size,
        min_resolution=source.min_resolution,
        min_aspect_ratio=source.min_aspect_ratio,
    )
    return clip[0]


def detok_example(
    raw: RawSample, source: SourceConfig, spec: DetokExampleSpec, seed: int, epoch: int
) -> dict:
    """One de-tokenizer video and a caption of a raw sample. Frame window and caption
    depend only on (seed, sample, epoch), as in the LLM loader (``sample_rngs``).

    Raises:
        MediaError: unusable media, or a sample without a caption (QA sources).
    """
    clip_rng, text_rng = sample_rngs(seed, raw.key, epoch)
    if not raw.captions:
        raise MediaError("no_caption", "de-tokenizer examples need caption sources")
    if raw.media_kind == "image":
        video_fchw = still_detok_video(raw.media, spec, source)
        times_f = np.zeros(spec.num_frames)
    else:
        threads = decoder_threads()
        video_fchw, times_f = read_detok_video(
            raw.media, spec, clip_rng, source.min_resolution, source.min_aspect_ratio, threads
        )
    return {
        "video": video_fchw,
        "frame_times": torch.from_numpy(np.asarray(times_f, dtype=np.float64)),
        "caption": raw.captions[int(text_rng.integers(len(raw.captions)))],
        "source": raw.source,
        "key": raw.key,
    }


def collate_detok_examples(examples: list[dict]) -> dict:
    """Stack de-tokenizer examples into a batch (every video has the same shape)."""
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


def detok_loader_spec(data_cfg: DataConfig, spec: DetokExampleSpec, split: str = "train") -> LoaderSpec:
    """``loader_spec`` of ``cfg.data`` for de-tokenizer examples."""
    return loader_spec(data_cfg, 0, spec.num_frames, spec.image_size, split, example_kind=spec)


def build_detok_loader(
    data_cfg: DataConfig,
    spec: DetokExampleSpec,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    pin_memory: bool = False,
) -> DivotLoader:
    """The de-tokenizer loader of one rank for ``cfg.data`` (``split="val"``:
    ``val_sources``, one pass): the LLM loader (sharding, mixing, resumable state, skip
    counts) yielding batches of de-tokenizer examples (``pin_memory``: training on CUDA).

    Raises:
        DataError / ValueError: see ``loader.loader_spec``.
    """
    return build_loader(data_cfg, None, 0, spec.num_frames, spec.image_size, rank, world_size, split,
                        example_kind=spec, pin_memory=pin_memory)  # fmt: skip
