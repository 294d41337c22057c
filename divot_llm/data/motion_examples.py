"""Motion examples: one Video-LaVIT motion-vector clip per video (``data.motion``,
seed-systems.md b.1), the data of stage=motion_tokenizer -- and, from a tokens cache, the
motion codes an LLM trains on.

A video's clips are what ``motion_vectors.motion_clips`` extracts (re-encoded to MPEG-4
Part 2, two GOPs per clip, at most ``max_clips``); an example is one of them: a random one
per (seed, sample, epoch) (``sample_rngs``, as every loader here draws), or clip
``SourceConfig.start_index`` (clamped to the last) when the source sets it (fixed
validation clips). A video too short for a clip, an image or an undecodable file is
skipped and counted (``no_motion_clip``, ``corrupt_video``, ...), after the source's
size filters, like every other reader. Everything else is the LLM loader's: rank x worker
sharding, mixing, the exact resumable state, the skip counts (``build_motion_loader``).

With ``data.motion_cache`` the clips come from the cache (``motion_cache``) instead: the
same samples, clip choices, skips and batches, fields rounded to fp16. Batches are::

    motion        (B, 2, F, H, W) float32   F = data.motion.clip_frames; or, reading codes,
    motion_codes  (B, N) int64              the motion tokenizer's codes of the clip
    start_frame   (B,) int64                the clip's I-frame in the re-encoded stream
    sources, keys
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from divot_llm.config.schema import DataConfig, MotionFieldConfig, SourceConfig
from divot_llm.data.clip_sampling import VideoInfo, check_media_size, decoder_threads, probe_video
from divot_llm.data.errors import MediaError
from divot_llm.data.loader import DivotLoader, build_loader, cache_group, sample_rngs
from divot_llm.data.motion_cache import MotionCache, MotionCacheInfo, load_motion_record
from divot_llm.data.motion_vectors import motion_clips
from divot_llm.data.sources import RawSample


@dataclass(frozen=True)
class MotionExampleSpec:
    """The motion clips a motion tokenizer trains on (the loader's ``example_kind``).

    Args:
        motion: the extraction settings (``cfg.data.motion``).
        tokenizer_fingerprint: read the codes of this motion tokenizer
            (``motion_cache.motion_tokenizer_fingerprint``) from a tokens cache instead of
            fields; None reads fields.
        cache, split: the motion cache to read and the split whose samples these are (its
            folders); ``build_motion_loader`` sets them from ``data.motion_cache``.
    """

    motion: MotionFieldConfig
    tokenizer_fingerprint: str | None = None
    cache: str | None = None
    split: str = "train"
    needs_text: ClassVar[bool] = False  # motion alone: any video source, vidtok_csv included

    def cache_info(self) -> MotionCacheInfo:
        """What a cache must hold to serve these examples."""
        return MotionCacheInfo(asdict(self.motion), tokenizer_fingerprint=self.tokenizer_fingerprint)

    def example(self, raw: RawSample, source: SourceConfig, seed: int, epoch: int) -> dict:
        return motion_example(raw, source, self, seed, epoch)

    def collate(self, examples: list[dict]) -> dict:
        return collate_motion_examples(examples)


def probe_for_motion(raw: RawSample) -> VideoInfo:
    """The video's size and rate, the first step of extracting its motion.

    Raises:
        MediaError: an image (``no_motion_clip``: no motion in a still), an unreadable video.
    """
    if raw.media_kind == "image":
        raise MediaError("no_motion_clip", "an image has no motion")
    return probe_video(raw.media)


def clip_index(num_clips: int, start_index: int | None, rng: np.random.Generator) -> int:
    """Which of a video's ``num_clips`` clips an example takes: ``start_index`` (clamped to
    the last clip) when the source fixes it, else a random one."""
    if start_index is not None:
        return min(start_index, num_clips - 1)
    return int(rng.integers(num_clips))


def motion_example(
    raw: RawSample, source: SourceConfig, spec: MotionExampleSpec, seed: int, epoch: int
) -> dict:
    """One motion clip of a raw sample (extracted, or read from ``spec.cache``).

    Raises:
        MediaError: no clip (``no_motion_clip``), unusable media, the size filters, a sample
            missing from the cache.
    """
    clip_rng, _ = sample_rngs(seed, raw.key, epoch)
    if spec.cache is not None:
        record = load_motion_record(Path(spec.cache), cache_group(spec.split, raw.source), raw.key)
        if record.size is not None:  # the filters first, as when extracting
            check_media_size(*record.size, source.min_resolution, source.min_aspect_ratio)
        if record.skip is not None:
            raise MediaError(*record.skip)
        if record.values is None:  # an image's keyframe codes (a cache for Video-LaVIT's LLM)
            raise MediaError("no_motion_clip", "an image has no motion")
        values, start_frames = record.values, record.start_frames
    else:
        info = probe_for_motion(raw)
        check_media_size(info.width, info.height, source.min_resolution, source.min_aspect_ratio)
        clips = motion_clips(raw.media, spec.motion, decoder_threads())
        values, start_frames = clips.fields, clips.start_frames
    k = clip_index(len(start_frames), source.start_index, clip_rng)
    return {
        "motion_codes" if spec.tokenizer_fingerprint is not None else "motion": values[k],
        "start_frame": torch.tensor(int(start_frames[k])),
        "source": raw.source,
        "key": raw.key,
    }


def collate_motion_examples(examples: list[dict]) -> dict:
    """Stack motion clips (or their codes) into a batch."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    name = "motion_codes" if "motion_codes" in examples[0] else "motion"
    return {
        name: torch.stack([e[name] for e in examples]),
        "start_frame": torch.stack([e["start_frame"] for e in examples]),
        "sources": [e["source"] for e in examples],
        "keys": [e["key"] for e in examples],
    }


def build_motion_loader(
    data_cfg: DataConfig,
    spec: MotionExampleSpec,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    pin_memory: bool = False,
) -> DivotLoader:
    """The motion loader of one rank for ``cfg.data`` (``split="val"``: ``val_sources``,
    one pass), reading ``data.motion_cache`` when it is set (checked against ``spec``).

    Raises:
        ValueError: a cache made for other settings (naming each difference); codes asked
            for without a cache. DataError / ValueError: see ``loader.loader_spec``.
        FileNotFoundError: ``data.motion_cache`` is not a motion cache.
    """
    if data_cfg.motion_cache:
        MotionCache(data_cfg.motion_cache).check(spec.cache_info())
        spec = replace(spec, cache=str(Path(data_cfg.motion_cache).resolve()), split=split)
    elif spec.tokenizer_fingerprint is not None:
        raise ValueError(
            "motion codes are read from a motion cache built with `divot-data motion-cache --tokens`: "
            "set data.motion_cache"
        )
    return build_loader(data_cfg, None, 0, spec.motion.clip_frames, 0, rank, world_size, split,
                        example_kind=spec, pin_memory=pin_memory)  # fmt: skip
