"""Fill a motion cache (``motion_cache``): extract every video's motion clips as the motion
loader does, optionally encode them with a motion tokenizer, write one file per sample.

The reading is the feature cache's (``cache_build.read_clips``): ``workers`` dataloader
processes each re-encode their share of every source while this process writes (and
encodes), ``shard=(i, n)`` splits the sources the same way across processes, samples
already written are not read again (an interrupted build resumes), and a record the
source cannot read is skipped and counted on it. Media that gives no clip is recorded in
the cache with its reason (``MotionRecord.skip``) and counted under it.

With ``keyframes`` (a keyframe tokenizer's ``encode``: Video-LaVIT's LLM data) each clip's
keyframe -- frame ``start_frames[k]`` of the same re-encoded stream, resized to
``keyframe_size`` as the loader resizes clips -- is encoded too, and an image sample is
recorded with its own keyframe codes instead of being skipped.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from divot_llm.config.schema import DataConfig, MotionFieldConfig, SourceConfig
from divot_llm.data.cache_build import check_every_source_usable, read_clips, split_specs
from divot_llm.data.clip_sampling import decoder_threads, resized_uint8
from divot_llm.data.errors import MediaError
from divot_llm.data.images import open_rgb
from divot_llm.data.loader import LoaderSpec
from divot_llm.data.motion_cache import (
    MOTION_INFO_FILE,
    MotionCache,
    MotionCacheInfo,
    MotionRecord,
    write_motion_info,
    write_motion_record,
)
from divot_llm.data.motion_examples import MotionExampleSpec, probe_for_motion
from divot_llm.data.motion_vectors import motion_clips_from_stream, reencode_for_motion, stream_frames
from divot_llm.data.sources import RawSample

Encode = Callable[[torch.Tensor], torch.Tensor]  # fields (B, 2, F, H, W) float32 -> codes (B, N) int64
# keyframes (B, 3, S, S) uint8 -> each one's visual codes (n_i,) int64 (a keyframe tokenizer's encode)
EncodeKeyframes = Callable[[torch.Tensor], list[torch.Tensor]]


def build_motion_cache(
    data_cfg: DataConfig,
    info: MotionCacheInfo,
    out_dir: str | Path,
    encode: Encode | None = None,
    splits: tuple[str, ...] = ("train", "val"),
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    batch_clips: int = 32,
    progress: Callable[[int], None] | None = None,
    keyframes: EncodeKeyframes | None = None,
    keyframe_size: int = 224,
) -> Counter:
    """Cache the motion of every sample of ``cfg.data``'s sources: every clip's field, or
    with ``encode`` its codes. ``info`` labels the cache: ``MotionCacheInfo.of(data_cfg.motion)``,
    with the tokenizer's name and fingerprint for codes. Returns counts
    (``written``, ``already_cached`` and skip reasons). ``workers``: extracting processes
    (0: here); ``shard=(i, n)``: the i-th of n shares of every source; ``batch_clips``:
    clips per ``encode`` call. ``keyframes``: also encode each clip's keyframe (and images),
    resized to ``keyframe_size`` (``info`` then names the keyframe tokenizer).

    Raises:
        ValueError: ``out_dir`` holds a cache made for another setup.
        DataError: a source without a single usable sample (only checked without ``shard``).
    """
    out = Path(out_dir)
    if (out / MOTION_INFO_FILE).is_file():  # resuming: never mix two setups in one folder
        MotionCache(out).check(info)
    write_motion_info(out, info)
    kind = MotionExampleSpec(data_cfg.motion)
    specs = split_specs(data_cfg, 0, data_cfg.motion.clip_frames, 0, splits, example_kind=kind)
    counts: Counter = Counter()
    tick = progress or (lambda n: None)
    pending: list[tuple[str, str, MotionRecord]] = []
    usable: set[str] = set()  # cache groups with at least one sample cached or to cache
    read = functools.partial(motion_record, data_cfg.motion, keyframe_size if keyframes else None)
    for group, key, record, read_counts in read_clips(specs, workers, shard, cached_in=out, read=read):
        counts.update(read_counts)
        if key:
            tick(1)
        if record is None:  # already cached, or the end of a source (no key)
            if key:  # usable, as the feature cache counts it
                usable.add(group)
            continue
        if record.skip is not None:
            write_motion_record(out, group, key, record)
            counts[record.skip[0]] += 1
            continue
        usable.add(group)
        if encode is None and keyframes is None:
            write_motion_record(out, group, key, record)
            counts["written"] += 1
            continue
        pending.append((group, key, record))
        if sum(_clips(r) for *_, r in pending) >= batch_clips:
            counts["written"] += _encode_and_write(pending, encode, out, keyframes)
    counts["written"] += _encode_and_write(pending, encode, out, keyframes)
    if shard[1] == 1:  # a shard may hold none of a small source's samples
        check_every_source_usable(specs, usable, counts, "cached", "the other sources' motion is written")
    return counts


def motion_record(
    motion: MotionFieldConfig, keyframe_size: int | None, raw: RawSample, src: SourceConfig, spec: LoaderSpec
) -> MotionRecord:
    """A sample's clips for the cache (with ``motion`` and ``keyframe_size`` bound, a
    ``cache_build.SampleReader``): every clip (with ``keyframe_size``, also each clip's
    keyframe as ``(K, 3, S, S)`` uint8; an image: itself as its one keyframe), or the reason
    it has none. The size filters are not applied here but when the cache is read."""
    size = None
    threads = decoder_threads()
    try:
        if keyframe_size is not None and raw.media_kind == "image":
            image = open_rgb(raw.media)
            return MotionRecord(
                None, None, image.size, keyframe_pixels=resized_uint8([np.asarray(image)], keyframe_size)
            )
        info = probe_for_motion(raw)
        size = (info.width, info.height)
        stream = reencode_for_motion(raw.media, motion, threads)
        clips = motion_clips_from_stream(stream, motion, threads)
        pixels = None
        if keyframe_size is not None:
            pixels = resized_uint8(stream_frames(stream, clips.start_frames, threads=threads), keyframe_size)
    except MediaError as exc:
        return MotionRecord(None, None, size, (exc.reason, exc.detail))
    return MotionRecord(clips.fields, clips.start_frames, size, keyframe_pixels=pixels)


def _clips(record: MotionRecord) -> int:
    return record.values.shape[0] if record.values is not None else 1


def _encode_and_write(
    pending: list[tuple[str, str, MotionRecord]],
    encode: Encode | None,
    out: Path,
    keyframes: EncodeKeyframes | None,
) -> int:
    """Encode the pending samples' fields (``encode``) and keyframes (``keyframes``) in one
    batch each, and write them."""
    if not pending:
        return 0
    records = [record for *_, record in pending]
    videos = [r for r in records if r.values is not None]
    codes_bn = None
    if encode is not None and videos:
        codes_bn = encode(torch.cat([r.values for r in videos])).cpu()  # (sum K, N)
    keyframe_codes: list[torch.Tensor] = []
    if keyframes is not None:
        keyframe_codes = [c.cpu() for c in keyframes(torch.cat([r.keyframe_pixels for r in records]))]
    clip_start = keyframe_start = 0
    for group, key, record in pending:
        values = record.values
        if values is not None and codes_bn is not None:
            values = codes_bn[clip_start : clip_start + values.shape[0]]
            clip_start += values.shape[0]
        frames = None
        if keyframes is not None:
            count = record.keyframe_pixels.shape[0]
            frames = keyframe_codes[keyframe_start : keyframe_start + count]
            keyframe_start += count
        write_motion_record(out, group, key, MotionRecord(values, record.start_frames, record.size,
                                                          keyframe_codes=frames))  # fmt: skip
    written = len(pending)
    pending.clear()
    return written
