"""VidTok examples: clips of ``num_frames`` frames, ``height`` x ``width`` pixels, the
training and validation data of stage=vidtok (seed-systems.md §a.3).

A clip takes every ``round(video fps / sample_fps)``-th frame of its video from a random
start (``SourceConfig.sample_fps``, ``start_index`` for fixed validation clips; see
``vidtok_frame_indices``). Frames are resized so that they cover ``height`` x ``width``
(the shorter side to the target for square clips) and centre-cropped, as every loader here
does (``clip_sampling.to_model_pixels``). A still image becomes a clip of one repeated frame.

Records come from any video source: VidTok's own layout (``kind: vidtok_csv``, a CSV of
paths under a DATA_DIR) or our shards, jsonl and folders. Everything else is the LLM
loader's: rank x worker sharding, the weighted mixer, the exact resumable state and the
bad-data skip counts (``build_vidtok_loader``). Batches are::

    video          (B, F, 3, H, W) float32 in [-1, 1]
    frame_indices  (B, F) int64, the source frame of each clip frame (a padded clip repeats its last)
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
    probe_video,
    read_frames_at,
    to_model_pixels,
)
from divot_llm.data.errors import MediaError
from divot_llm.data.loader import DivotLoader, build_loader, sample_rngs
from divot_llm.data.sources import RawSample


class ClipFormat(Protocol):
    """What a VidTok model trains on (``VidTokConfig``'s fields)."""

    @property
    def frames_per_clip(self) -> int: ...
    @property
    def input_height(self) -> int: ...
    @property
    def input_width(self) -> int: ...


@dataclass(frozen=True)
class VidTokExampleSpec:
    """The clips a VidTok model trains on: ``num_frames`` frames of ``height`` x ``width``
    pixels (its ``frames_per_clip``, ``input_height``, ``input_width``). The loader's
    ``example_kind`` for stage=vidtok; the frame rate and start are per source
    (``SourceConfig.sample_fps``, ``start_index``)."""

    num_frames: int
    height: int
    width: int
    needs_text: ClassVar[bool] = False  # videos alone: vidtok_csv sources feed it

    def __post_init__(self):
        if min(self.num_frames, self.height, self.width) < 1:
            raise ValueError(f"a VidTok clip needs at least one frame and pixel, got {self}")

    @classmethod
    def of(cls, config: ClipFormat) -> VidTokExampleSpec:
        """The clips of a VidTok model config."""
        return cls(config.frames_per_clip, config.input_height, config.input_width)

    def example(self, raw: RawSample, source: SourceConfig, seed: int, epoch: int) -> dict:
        return vidtok_example(raw, source, self, seed, epoch)

    def collate(self, examples: list[dict]) -> dict:
        return collate_vidtok_examples(examples)


# ----------------------------------------------------------------------- sampling


def vidtok_frame_indices(
    num_frames: int,
    video_fps: float,
    clip_frames: int,
    sample_fps: float | None,
    rng: np.random.Generator,
    start_index: int | None = None,
) -> np.ndarray:
    """Source frame indices ``(clip_frames,)`` of one VidTok clip.

    The clip takes every ``stride = round(video_fps / sample_fps)``-th frame (at least 1;
    ``sample_fps`` None: every frame) from its start: ``start_index`` when given, else a
    random frame from which the whole clip fits. A video too short for the stride from
    frame 0 spreads the clip over all its frames (VidTok's rule); one with fewer frames
    than the clip gives each frame once and repeats the last. A ``start_index`` too late
    for the clip to fit moves back to the last start that fits.

    VidTok's own sampler (a float ``linspace`` to one frame past the stride) ends its
    clips one frame late and never draws the last start that fits; these clips are on the
    stride exactly.

    Raises:
        MediaError: ``no_frames``, the video has none.
    """
    if num_frames < 1:
        raise MediaError("no_frames", "video has no frames")
    stride = 1 if sample_fps is None else max(1, round(video_fps / sample_fps))
    taken = min(clip_frames, num_frames)  # distinct positions; the rest repeat the last
    span = (taken - 1) * stride  # first to last frame of a clip on the stride
    latest = num_frames - 1 - span  # the last start from which it fits
    if latest < 0:  # too short for the stride: spread over the whole video
        indices = np.linspace(0, num_frames - 1, taken).astype(np.int64)
    else:
        start = min(start_index, latest) if start_index is not None else int(rng.integers(0, latest + 1))
        indices = start + stride * np.arange(taken, dtype=np.int64)
    return np.concatenate([indices, np.full(clip_frames - taken, indices[-1], dtype=np.int64)])


def read_vidtok_clip(
    media: bytes | str | os.PathLike,
    spec: VidTokExampleSpec,
    source: SourceConfig,
    rng: np.random.Generator,
    threads: int = 0,
) -> tuple[torch.Tensor, np.ndarray]:
    """One VidTok clip of a video file: ``(F, 3, H, W)`` pixels in [-1, 1] and the source
    frame indices ``(F,)``, with the source's frame rate, start and size filters.

    Raises:
        MediaError: unusable video (corrupt, no frames, too small, too elongated).
    """
    info = probe_video(media)
    check_media_size(info.width, info.height, source.min_resolution, source.min_aspect_ratio)
    indices_f = vidtok_frame_indices(
        info.num_frames, info.fps, spec.num_frames, source.sample_fps, rng, source.start_index
    )
    # frames by presentation time (exact for constant-rate video; as the other loaders)
    distinct = np.unique(indices_f)
    frames = read_frames_at(media, distinct / info.fps, threads=threads)
    frames_f = [frames[i] for i in np.searchsorted(distinct, indices_f)]
    return to_model_pixels(frames_f, (spec.height, spec.width)), indices_f


def vidtok_example(
    raw: RawSample, source: SourceConfig, spec: VidTokExampleSpec, seed: int, epoch: int
) -> dict:
    """One VidTok clip of a raw sample. Its random start depends only on (seed, sample,
    epoch), as in the LLM loader (``sample_rngs``).

    Raises:
        MediaError: unusable media.
    """
    clip_rng, _ = sample_rngs(seed, raw.key, epoch)
    if raw.media_kind == "image":
        size = (spec.height, spec.width)
        clip = image_clip(raw.media, spec.num_frames, size, min_resolution=source.min_resolution,
                          min_aspect_ratio=source.min_aspect_ratio)  # fmt: skip
        video_fchw, indices_f = clip[0], np.zeros(spec.num_frames, dtype=np.int64)
    else:
        threads = decoder_threads()
        video_fchw, indices_f = read_vidtok_clip(raw.media, spec, source, clip_rng, threads)
    return {
        "video": video_fchw,
        "frame_indices": torch.from_numpy(indices_f),
        "source": raw.source,
        "key": raw.key,
    }


def collate_vidtok_examples(examples: list[dict]) -> dict:
    """Stack VidTok clips into a batch (every clip has the same shape)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    return {
        "video": torch.stack([e["video"] for e in examples]),
        "frame_indices": torch.stack([e["frame_indices"] for e in examples]),
        "sources": [e["source"] for e in examples],
        "keys": [e["key"] for e in examples],
    }


# ----------------------------------------------------------------------- building


def build_vidtok_loader(
    data_cfg: DataConfig,
    spec: VidTokExampleSpec,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    pin_memory: bool = False,
) -> DivotLoader:
    """The VidTok loader of one rank for ``cfg.data`` (``split="val"``: ``val_sources``,
    one pass): the LLM loader (sharding, mixing, resumable state, skip counts) yielding
    batches of VidTok clips (``pin_memory``: training on CUDA).

    Raises:
        DataError / ValueError: see ``loader.loader_spec``.
    """
    return build_loader(data_cfg, None, 0, spec.num_frames, 0, rank, world_size, split,
                        example_kind=spec, pin_memory=pin_memory)  # fmt: skip
