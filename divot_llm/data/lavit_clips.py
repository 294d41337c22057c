"""Video-LaVIT clip examples: a motion clip's field and its frames, the data of
stage=lavit_detok (the video de-tokenizer learns to turn frame 0 plus the field back into
the frames).

A video is re-encoded as for its motion (``motion_vectors.reencode_for_motion``: MPEG-4 Part 2
at ``data.motion.fps``); the example is one of its clips, chosen exactly as
``motion_examples`` chooses (``clip_index`` from the same ``sample_rngs``: the same clip a
motion example of this (seed, sample, epoch) takes), with the clip's ``clip_frames`` frames
decoded from the same re-encoded stream from its I-frame on (``stream_frames``; the release
takes its keyframe from that stream too), resized and centre-cropped like every clip here
(``resized_uint8``: ``to_model_pixels`` before its scaling, a quarter of the bytes) to the
de-tokenizer's size. Skips and counts, sharding, mixing and the
exact resumable state are the loader's. No motion cache: the frames come from the video.
Batches are::

    motion        (B, 2, F, H, W) float32   the fields (data.motion units), F = clip_frames
    clip          (B, F, 3, S_h, S_w) uint8     (``uint8_to_model_pixels``: [-1, 1])
    start_frame   (B,) int64                the clip's I-frame in the re-encoded stream
    sources, keys
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from divot_llm.config.schema import DataConfig, MotionFieldConfig, SourceConfig
from divot_llm.data.clip_sampling import check_media_size, decoder_threads, resized_uint8
from divot_llm.data.loader import DivotLoader, build_loader, sample_rngs
from divot_llm.data.motion_examples import clip_index, probe_for_motion
from divot_llm.data.motion_vectors import motion_clips_from_stream, reencode_for_motion, stream_frames
from divot_llm.data.sources import RawSample


@dataclass(frozen=True)
class LaVITClipSpec:
    """Motion clips with their frames (the loader's ``example_kind``).

    Args:
        motion: the extraction settings (``cfg.data.motion``).
        height, width: the frames' size (the de-tokenizer's).
    """

    motion: MotionFieldConfig
    height: int
    width: int
    needs_text: ClassVar[bool] = False

    def example(self, raw: RawSample, source: SourceConfig, seed: int, epoch: int) -> dict:
        return lavit_clip_example(raw, source, self, seed, epoch)

    def collate(self, examples: list[dict]) -> dict:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        return {
            "motion": torch.stack([e["motion"] for e in examples]),
            "clip": torch.stack([e["clip"] for e in examples]),
            "start_frame": torch.stack([e["start_frame"] for e in examples]),
            "sources": [e["source"] for e in examples],
            "keys": [e["key"] for e in examples],
        }


def lavit_clip_example(
    raw: RawSample, source: SourceConfig, spec: LaVITClipSpec, seed: int, epoch: int
) -> dict:
    """One motion clip of a raw sample with its frames.

    Raises:
        MediaError: no clip (``no_motion_clip``), unusable media, the size filters.
    """
    clip_rng, _ = sample_rngs(seed, raw.key, epoch)
    info = probe_for_motion(raw)
    check_media_size(info.width, info.height, source.min_resolution, source.min_aspect_ratio)
    threads = decoder_threads()
    stream = reencode_for_motion(raw.media, spec.motion, threads)
    clips = motion_clips_from_stream(stream, spec.motion, threads)
    k = clip_index(len(clips.start_frames), source.start_index, clip_rng)
    start = int(clips.start_frames[k])
    frames = stream_frames(stream, range(start, start + spec.motion.clip_frames), threads=threads)
    return {
        "motion": clips.fields[k],
        "clip": resized_uint8(frames, (spec.height, spec.width)),
        "start_frame": torch.tensor(start),
        "source": raw.source,
        "key": raw.key,
    }


def build_lavit_clip_loader(
    data_cfg: DataConfig,
    spec: LaVITClipSpec,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    pin_memory: bool = False,
) -> DivotLoader:
    """The clip loader of one rank for ``cfg.data`` (``split="val"``: ``val_sources``, one pass).

    Raises:
        ValueError: ``data.motion_cache`` is set (it holds no frames). DataError / ValueError:
            see ``loader.loader_spec``.
    """
    if data_cfg.motion_cache:
        raise ValueError("stage=lavit_detok reads frames from the videos: unset data.motion_cache")
    return build_loader(data_cfg, None, 0, spec.motion.clip_frames, 0, rank, world_size, split,
                        example_kind=spec, pin_memory=pin_memory)  # fmt: skip
