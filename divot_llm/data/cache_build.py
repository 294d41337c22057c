"""Fill a feature cache: sample each sample's clips as the loader does in epoch 0, encode
them with the frozen video tokenizer in batches, write one file per sample.

Decoding is the slow part, so ``workers`` dataloader processes can read in parallel:
worker i reads the i-th share of every source (the loader's own split, so each sample is
read exactly once) while this process encodes; ``shard`` splits the same way across
processes (one per GPU). A sample's clips depend only on its key
and the seed, so the cache holds the same clips whatever the number of workers.

Re-running continues an interrupted build: samples already written are skipped. A bad
sample is skipped and counted (the loader's per-record guard, ``Source.iterate``); a
source without a single usable sample is an error naming it, once the others are cached.
Each share writes a part file when it is done, and the build ends with ``index.json``,
merged from every share's part (``feature_cache.write_index``): n processes under a
launcher (``data_recipes.ranks``) give the same files and index as one.
The reading alone is ``read_clips`` (``latent_stats`` reads the same clips through it).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from divot_llm.config.schema import DataConfig, SourceConfig
from divot_llm.data.clip_sampling import uint8_to_model_pixels
from divot_llm.data.feature_cache import (
    INDEX_FILE,
    INFO_FILE,
    BuildPart,
    CacheInfo,
    FeatureCache,
    finished_parts,
    part_file,
    sample_file,
    write_index,
    write_info,
    write_sample,
)
from divot_llm.data.loader import (
    ExampleKind,
    LoaderSpec,
    cache_group,
    loader_spec,
    open_source,
    picklable_errors,
    sample_clips,
    sample_rngs,
)
from divot_llm.data.sources import Consumer, DataError, RawSample
from divot_llm.data.worker_signals import stop_signals_deferred, worker_init_fn

SPLITS = ("train", "val")  # what a feature cache holds

# What a reader hands the encoder: (cache group, key, uint8 clips (C, F, 3, S, S) -- or
# what its ``SampleReader`` makes of the sample -- or None, counts). A sample to encode has
# clips; a cached sample has None and counts one ``already_cached``; an exhausted source
# has no key and its reader's skip counts.
Read = tuple[str, str, Any, dict[str, int]]
# What a reader makes of a raw sample (a module-level function: it is pickled to the workers).
SampleReader = Callable[[RawSample, SourceConfig, LoaderSpec], Any]


def build_feature_cache(
    data_cfg: DataConfig,
    tokenizer,
    info: CacheInfo,
    out_dir: str | Path,
    splits: tuple[str, ...] = SPLITS,
    batch_clips: int = 32,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    stop: Callable[[], bool] | None = None,
    finish: bool = True,
) -> Counter:
    """Cache the features of every sample of ``cfg.data``'s sources; returns counts
    (``written``, ``already_cached`` and skip reasons). ``workers``: decoding processes
    (0 decodes here). ``shard=(i, n)``: only the i-th of n shares of every source (split
    as the loader splits ranks), so n processes -- one per GPU -- fill one cache.

    A share that gets to its end writes its part file (``BuildPart``); with ``finish``, a
    share that then finds every share's part in ``out_dir`` -- always, with one share --
    finishes the cache (``finish_feature_cache``: every source had a usable sample, then
    ``index.json``); without, the caller does (a launch gathers the parts). ``stop``
    (asked before each sample is taken; True: a stop signal came) ends the build early,
    between batches: the samples written are kept, the batch being read is dropped, and
    no part is written.

    Raises:
        ValueError: ``out_dir`` holds a cache made for another setup (resuming into it
            would mix the two).
        DataError: finishing, a source without a usable sample in any share.
    """
    out = Path(out_dir)
    prepare_cache_dir(out, info, shard)
    # only clips are read: no token sequence is built, so no LLM tokens per clip (0)
    specs = feature_specs(data_cfg, tokenizer.frames_per_clip, info, splits)
    counts: Counter = Counter()
    tick = progress or (lambda n: None)
    pending: list[tuple[str, str, torch.Tensor]] = []
    samples: Counter = Counter()  # cache group -> samples cached or to cache
    with stop_signals_deferred():  # a stop signal while the workers start is the build's
        reads = iter(read_clips(specs, workers, shard, cached_in=out))
    for group, key, clips, read_counts in reads:
        if stop is not None and stop():
            return counts  # between batches (the one being read is dropped: read again on resume)
        counts.update(read_counts)
        if key:
            samples[group] += 1
            tick(1)
        if clips is None:
            continue
        pending.append((group, key, clips))
        if sum(c.shape[0] for *_, c in pending) >= batch_clips:
            counts["written"] += _flush(pending, tokenizer, out)
    counts["written"] += _flush(pending, tokenizer, out)
    BuildPart(*shard, groups=dict(samples), counts=dict(counts)).write(out)
    parts = finished_parts(out, shard[1]) if finish else None
    if parts:  # a share may hold none of a small source's samples: checked over every part
        finish_feature_cache(out, specs, parts)
    return counts


def prepare_cache_dir(out: Path, info: CacheInfo, shard: tuple[int, int]) -> None:
    """Record ``info`` in ``out`` -- refusing a cache made for another setup, whose samples
    a resumed build would skip -- and mark the build unfinished: no index, and no part of
    this share from an earlier build."""
    if (out / INFO_FILE).is_file():
        FeatureCache(out).check_fields(info)
    write_info(out, info)
    (out / INDEX_FILE).unlink(missing_ok=True)
    part_file(out, *shard).unlink(missing_ok=True)


def finish_feature_cache(
    out_dir: str | Path, specs: list[tuple[str, LoaderSpec]], parts: list[BuildPart]
) -> dict:
    """Finish a build from every share's part: check that every source of ``specs`` had a
    usable sample in some share, then write ``index.json``; returns the index.

    Raises:
        DataError: a source without a usable sample (no index is written).
    """
    usable = {group for part in parts for group, n in part.groups.items() if n > 0}
    counts: Counter = Counter()
    for part in parts:
        counts.update(part.counts)
    check_every_source_usable(specs, usable, counts, "cached", "the other sources' features are written")
    return write_index(Path(out_dir), parts)


def feature_specs(
    data_cfg: DataConfig, frames_per_clip: int, info: CacheInfo, splits: tuple[str, ...] = SPLITS
) -> list[tuple[str, LoaderSpec]]:
    """The ``split_specs`` a feature cache is built over (no LLM tokens per clip: only
    clips are read)."""
    return split_specs(data_cfg, 0, frames_per_clip, info.image_size, splits)


def epoch0_clips(raw: RawSample, src: SourceConfig, spec: LoaderSpec) -> torch.Tensor:
    """A sample's uint8 clips (C, F, 3, S, S) as the loader samples them in epoch 0."""
    return sample_clips(raw, src, spec, sample_rngs(spec.seed, raw.key, 0)[0])


def read_clips(
    specs: list[tuple[str, LoaderSpec]],
    workers: int = 0,
    shard: tuple[int, int] = (0, 1),
    cached_in: Path | None = None,
    read: SampleReader = epoch0_clips,
) -> torch.utils.data.DataLoader:
    """Every sample's clips as the loader samples them in epoch 0 (or what ``read`` makes of
    it), read by ``workers`` processes (0: here): an iterable of ``Read`` tuples (see
    above), in source order with ``workers=0``. ``shard=(i, n)``: only the i-th of n shares
    of every source. A sample already in the cache ``cached_in`` is not read (None)."""
    return torch.utils.data.DataLoader(
        _Readers(specs, cached_in, shard, read),
        batch_size=None,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
        worker_init_fn=worker_init_fn(),  # stop signals: see worker_signals
    )


def check_every_source_usable(
    specs: list[tuple[str, LoaderSpec]], usable: set[str], counts: Counter, verb: str, done: str
) -> None:
    """Raise DataError naming the first source none of whose samples was read (``usable``
    holds the cache groups that had one): nothing of it could be ``verb`` ("cached");
    ``done`` says what happened to the others."""
    for split, spec in specs:
        for name in spec.sources:
            if cache_group(split, name) not in usable:
                skipped = ", ".join(
                    f"{reason} {n}"
                    for reason, n in counts.items()
                    if reason not in ("written", "already_cached")
                )
                raise DataError(
                    f"{split} source {name} has no usable sample: nothing of it could be {verb} "
                    f"(skipped over all sources: {skipped or 'none'}); {done}."
                )


def split_specs(
    data_cfg: DataConfig,
    tokens_per_clip: int,
    frames_per_clip: int,
    image_size: int,
    splits: tuple[str, ...],
    example_kind: ExampleKind | None = None,
) -> list[tuple[str, LoaderSpec]]:
    """``(split, loader_spec)`` of each split of ``splits`` that has sources (train must)."""
    specs = []
    for split in splits:
        try:
            spec = loader_spec(data_cfg, tokens_per_clip, frames_per_clip, image_size, split, example_kind)
            specs.append((split, spec))
        except DataError:
            if split == "train":
                raise
            # no validation sources configured
    return specs


class _Readers(torch.utils.data.IterableDataset):
    """Reads and samples every not-yet-cached sample; in a dataloader worker, only that
    worker's share of each source."""

    def __init__(
        self,
        specs: list[tuple[str, LoaderSpec]],
        cached_in: Path | None,
        shard: tuple[int, int],
        read: SampleReader,
    ):
        super().__init__()
        self.specs, self.cached_in, self.shard, self.read = specs, cached_in, shard, read

    def __iter__(self) -> Iterator[Read]:
        with picklable_errors():
            yield from self._reads()

    def _reads(self) -> Iterator[Read]:
        worker = torch.utils.data.get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        consumer = Consumer.of(*self.shard, worker_id, num_workers)
        for split, spec in self.specs:
            for name, src in spec.sources.items():
                group = cache_group(split, name)
                source = open_source(spec, name, src, consumer, infinite=False)
                # a sample whose clips cannot be read is skipped and counted on the source
                yield from source.iterate(functools.partial(self._read, group, src, spec))
                yield group, "", None, dict(source.skipped)

    def _read(self, group: str, src: SourceConfig, spec: LoaderSpec, raw: RawSample) -> Read:
        if self.cached_in is not None and sample_file(self.cached_in, group, raw.key).is_file():
            return group, raw.key, None, {"already_cached": 1}
        return group, raw.key, self.read(raw, src, spec), {}


def _flush(pending: list[tuple[str, str, torch.Tensor]], tokenizer, out: Path) -> int:
    if not pending:
        return 0
    frames_bfchw = torch.cat([clips for *_, clips in pending]).to(
        tokenizer.device
    )  # (sum C, F, 3, S, S) uint8
    # kept in the encode dtype (CacheInfo.encode_dtype): bf16 features as bf16, not fp32
    feats_bnd = tokenizer.encode(uint8_to_model_pixels(frames_bfchw).to(tokenizer.dtype)).cpu()
    start = 0
    for group, key, clips in pending:
        write_sample(out, group, key, feats_bnd[start : start + clips.shape[0]])
        start += clips.shape[0]
    written = len(pending)
    pending.clear()
    return written
