"""Fill a motion cache (``motion_cache``): extract every video's motion clips as the motion
loader does, optionally encode them with a motion tokenizer, write one file per sample.

The reading is the feature cache's (``cache_build.read_clips``): ``workers`` dataloader
processes each re-encode their share of every source while this process writes (and
encodes), ``shard=(i, n)`` splits the sources the same way across processes, samples
already written are not read again (an interrupted build resumes), and a record the
source cannot read is skipped and counted on it. Media that gives no clip is recorded in
the cache with its reason (``MotionRecord.skip``) and counted under it.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from divot_llm.config.schema import DataConfig, MotionFieldConfig, SourceConfig
from divot_llm.data.cache_build import check_every_source_usable, read_clips, split_specs
from divot_llm.data.clip_sampling import decoder_threads
from divot_llm.data.errors import MediaError
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
from divot_llm.data.motion_vectors import motion_clips
from divot_llm.data.sources import RawSample

Encode = Callable[[torch.Tensor], torch.Tensor]  # fields (B, 2, F, H, W) float32 -> codes (B, N) int64


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
) -> Counter:
    """Cache the motion of every sample of ``cfg.data``'s sources: every clip's field, or
    with ``encode`` its codes. ``info`` labels the cache: ``MotionCacheInfo.of(data_cfg.motion)``,
    with the tokenizer's name and fingerprint for codes. Returns counts
    (``written``, ``already_cached`` and skip reasons). ``workers``: extracting processes
    (0: here); ``shard=(i, n)``: the i-th of n shares of every source; ``batch_clips``:
    clips per ``encode`` call.

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
    read = functools.partial(motion_record, data_cfg.motion)
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
        if encode is None:
            write_motion_record(out, group, key, record)
            counts["written"] += 1
            continue
        pending.append((group, key, record))
        if sum(r.values.shape[0] for *_, r in pending) >= batch_clips:
            counts["written"] += _encode_and_write(pending, encode, out)
    counts["written"] += _encode_and_write(pending, encode, out)
    if shard[1] == 1:  # a shard may hold none of a small source's samples
        check_every_source_usable(specs, usable, counts, "cached", "the other sources' motion is written")
    return counts


def motion_record(
    motion: MotionFieldConfig, raw: RawSample, src: SourceConfig, spec: LoaderSpec
) -> MotionRecord:
    """A sample's clips for the cache (with ``motion`` bound, a ``cache_build.SampleReader``):
    every clip, or the reason it has none. The size filters are not applied here but when
    the cache is read."""
    size = None
    try:
        info = probe_for_motion(raw)
        size = (info.width, info.height)
        clips = motion_clips(raw.media, motion, decoder_threads())
    except MediaError as exc:
        return MotionRecord(None, None, size, (exc.reason, exc.detail))
    return MotionRecord(clips.fields, clips.start_frames, size)


def _encode_and_write(pending: list[tuple[str, str, MotionRecord]], encode: Encode | None, out: Path) -> int:
    if not pending:
        return 0
    fields_bcfhw = torch.cat([record.values for *_, record in pending])  # (sum K, 2, F, H, W)
    codes_bn = encode(fields_bcfhw).cpu()
    start = 0
    for group, key, record in pending:
        count = record.values.shape[0]
        write_motion_record(out, group, key, MotionRecord(codes_bn[start : start + count], record.start_frames,
                                                          record.size))  # fmt: skip
        start += count
    written = len(pending)
    pending.clear()
    return written
