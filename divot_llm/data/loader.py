"""The training/validation data loader: sources -> examples -> mixed batches, over
dataloader workers, with an exact, resumable state.

Each dataloader worker of each rank is one *reader* (see ``sources.Consumer``): it owns
its slice of every source, its own mixer and its own position. A worker yields each
batch together with its state right after producing it; the main process keeps the state
of the last batch it actually handed out per worker slot. Since torch's DataLoader takes
batches from its workers round-robin, a resumed loader rotates which physical worker
plays which slot so that the next batch comes from the slot whose turn it was -- the
resumed stream is the uninterrupted one, batch for batch. The same round-robin is what
lets "batch" mixing give every rank the same source in a step: slot s of W makes its
rank's batches s, s + W, ..., and draws each one's source from the seed and that index.

Three kinds of examples flow through the same machinery: token sequences with 5-frame
tokenizer clips (the LLM stages), or -- with an ``example_kind`` -- the whole videos a
de-tokenizer decodes, with a caption (``detok_examples.DetokExampleSpec``, the
de-tokenizer stages), or VidTok's clips (``vidtok_examples.VidTokExampleSpec``,
stage=vidtok).
"""

from __future__ import annotations

import contextlib
import copy
import pickle
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from divot_llm.config.schema import DataConfig, MixMode, SourceConfig, SourceKind, StreamConfig, Task
from divot_llm.data.clip_sampling import clip_positions, decoder_threads, image_clip, sample_video_clips
from divot_llm.data.collate import collate, pack
from divot_llm.data.errors import MediaError
from divot_llm.data.feature_cache import CacheInfo, FeatureCache
from divot_llm.data.mixing import BatchSchedule, Mixer, MixSource, padded_tokens
from divot_llm.data.sequences import COMPREHENSION_TASKS, SequenceBuilder, sequence_example
from divot_llm.data.shard_stream import Shard, StreamTarSource, list_shards, refuse_streams
from divot_llm.data.shard_transport import shard_display
from divot_llm.data.sources import (
    Consumer,
    DataError,
    FolderSource,
    JsonlSource,
    RawSample,
    Source,
    TarSource,
    VidTokCsvSource,
    expand_paths,
    safe_join,
    stable_seed,
)
from divot_llm.data.worker_signals import worker_init_fn
from divot_llm.text.tokenizer import DivotTextTokenizer


class ExampleKind(Protocol):
    """How a non-sequence loader turns raw samples into batches
    (``detok_examples.DetokExampleSpec``, ``vidtok_examples.VidTokExampleSpec``)."""

    needs_text: bool  # whether its examples need a caption (vidtok_csv sources have none)
    # A kind whose ``collate`` packs rows itself (LaVIT sequences) also has ``packs = True``;
    # the others leave it out and data.packing is refused for them.

    def example(self, raw: RawSample, source: SourceConfig, seed: int, epoch: int) -> dict: ...
    def collate(self, examples: list[dict]) -> dict: ...


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a worker needs to rebuild its streams (picklable: the sources are the
    config's own dataclasses)."""

    root: Path
    sources: dict[str, SourceConfig]  # by source name
    seed: int
    infinite: bool
    mixing: MixMode
    batch_size: int
    tokens_per_batch: int | None
    pack_length: int | None  # None: no packing
    tokens_per_clip: int  # M: the LLM's, in the sequences (divot_llm.model.llm_tokens_per_clip)
    frames_per_clip: int
    image_size: int
    frames_per_window: int
    sample_fps: float
    stride: int
    feature_cache: str | None = None  # read tokenizer features instead of decoding frames
    resize_kernel: str = "pil"  # the frames' resize (clip_sampling.RESIZE_KERNELS)
    split: str = "train"
    example_kind: ExampleKind | None = None  # e.g. de-tokenizer videos instead of token sequences
    max_skip_fraction: float | None = None  # stop when a reader skips more (sources.Source)
    stream: StreamConfig = field(default_factory=StreamConfig)  # how streamed shards are read


# ------------------------------------------------------------------------ examples


def sample_clips(
    raw: RawSample, source: SourceConfig, spec: LoaderSpec, rng: np.random.Generator
) -> torch.Tensor:
    """(C, F, 3, S, S) uint8 frames of a sample's video (reference clip rules) or image,
    after the source's size filters."""
    if raw.media_kind == "image":
        return image_clip(
            raw.media,
            spec.frames_per_clip,
            spec.image_size,
            as_uint8=True,
            min_resolution=source.min_resolution,
            min_aspect_ratio=source.min_aspect_ratio,
            resize_kernel=spec.resize_kernel,
        )
    generation = source.task.value not in COMPREHENSION_TASKS
    return sample_video_clips(
        raw.media,
        num_clips=1 if generation else source.num_clips,
        rng=rng,
        dense=source.task is Task.sft_comp,  # QA: always num_clips clips (reference §7.3)
        image_size=spec.image_size,
        window=spec.frames_per_window,
        sample_fps=spec.sample_fps,
        stride=spec.stride,
        min_resolution=source.min_resolution,
        min_aspect_ratio=source.min_aspect_ratio,
        threads=decoder_threads(),
        as_uint8=True,  # converted on the accelerator (uint8_to_model_pixels): 4x fewer bytes to move
        resize_kernel=spec.resize_kernel,
    )


def sample_rngs(seed: int, key: str, epoch: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Per-sample generators for clip sampling and for text choices (caption, prompt).

    They depend only on the sample and epoch -- the same whichever worker or rank reads
    it -- and are separate so that reading cached features (no clip sampling) leaves the
    text choices exactly as when decoding frames.
    """
    return (
        np.random.default_rng(stable_seed(seed, key, epoch, "clips")),
        np.random.default_rng(stable_seed(seed, key, epoch, "text")),
    )


def make_example(
    raw: RawSample,
    source: SourceConfig,
    spec: LoaderSpec,
    builder: SequenceBuilder,
    epoch: int,
    cache: FeatureCache | None = None,
) -> tuple[dict, bool]:
    """One training example and whether its text was truncated. With a feature cache the
    example carries ``video_feats (C, N, D)`` instead of ``frames (C, F, 3, S, S)``."""
    clip_rng, text_rng = sample_rngs(spec.seed, raw.key, epoch)
    if cache is not None:
        try:
            media_key, media = "video_feats", cache.load(cache_group(spec.split, raw.source), raw.key)
        except FileNotFoundError as exc:
            raise MediaError("not_in_cache", str(exc)) from exc
    else:
        media_key, media = "frames", sample_clips(raw, source, spec, clip_rng)
    task = source.task.value
    seq = builder.build(
        task, raw.media_kind, media.shape[0], source.max_length, text_rng, raw.captions, raw.turns
    )
    return sequence_example(seq, task, media_key, media, raw.source, raw.key), seq.truncated


MakeExample = Callable[[RawSample, int], tuple[dict, bool]]  # (raw, epoch) -> (example, truncated)


def example_maker(spec: LoaderSpec, src: SourceConfig, tokenizer: DivotTextTokenizer | None) -> MakeExample:
    """What turns one source's raw samples into examples: a token sequence + clips (or
    cached features), or the ``spec.example_kind``'s example when it is set."""
    if spec.example_kind is not None:
        kind = spec.example_kind
        return lambda raw, epoch: (kind.example(raw, src, spec.seed, epoch), False)
    builder = SequenceBuilder(tokenizer, spec.tokens_per_clip, src.bidirectional_queries)
    cache = FeatureCache(spec.feature_cache) if spec.feature_cache else None
    return lambda raw, epoch: make_example(raw, src, spec, builder, epoch, cache)


class ExampleStream:
    """A source's raw samples turned into examples under the source's per-record guard
    (``Source.iterate``): a sample whose example cannot be made -- bad media, text the
    tokenizer cannot encode, a sequence too long, anything unforeseen -- is skipped and
    counted on the source's counter (so counts travel with its state)."""

    def __init__(self, source: Source, make: MakeExample):
        self.source, self.make = source, make

    def state_dict(self) -> dict:
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state)

    def __iter__(self) -> Iterator[dict]:
        return self.source.iterate(self._example)

    def _example(self, raw: RawSample) -> dict:
        example, truncated = self.make(raw, self.source.epoch)
        if truncated:
            self.source.note("truncated_kept")
        return example


# ------------------------------------------------------------------------- mixing


def cache_group(split: str, source: str) -> str:
    """The feature-cache folder of a source: splits may reuse source names."""
    return f"{split}-{source}"


def source_key(split: str, name: str) -> str:
    """A source's config key: ``data.sources.<name>`` (train) or ``data.val_sources.<name>``."""
    return f"data.{'sources' if split == 'train' else 'val_sources'}.{name}"


def source_files(spec: LoaderSpec, name: str, src: SourceConfig) -> list[Shard]:
    """What a source reads: its files under ``spec.root`` -- for a webdataset source, its
    shards (``shard_stream.list_shards``: local ``Path``s and streamed URL / ``pipe:``
    entries, from ``paths`` and ``shard_list``).

    Raises:
        DataError: naming the source's key: nothing matches; a shard list, URL or ``pipe:``
            entry in a source of another kind; an unknown scheme (see ``list_shards``).
    """
    key = source_key(spec.split, name)
    if src.kind is SourceKind.webdataset:
        return list_shards(spec.root, key, list(src.paths), src.shard_list, dict(spec.stream.commands))
    refuse_streams(key, src.kind.value, list(src.paths), src.shard_list)
    return expand_paths(spec.root, src.paths, name, folders=src.kind is SourceKind.folder)


def open_source(spec: LoaderSpec, name: str, src: SourceConfig, consumer: Consumer, infinite: bool) -> Source:
    """The raw-sample reader of one configured source (records checked against its task).
    A webdataset source whose shards are all local reads them by random access
    (``TarSource``); one with a URL or ``pipe:`` entry reads every shard as a stream
    (``shard_stream.StreamTarSource``, with ``spec.stream``)."""
    files = source_files(spec, name, src)
    task = src.task.value if src.task is not None else None
    checks = {"task": task, "max_skip_fraction": spec.max_skip_fraction}
    if src.kind is SourceKind.jsonl:
        media_root = safe_join(spec.root, src.media_root or ".")
        return JsonlSource(name, files, media_root, spec.seed, consumer, infinite, **checks)
    if src.kind is SourceKind.vidtok_csv:
        media_root = safe_join(spec.root, src.media_root or ".")
        return VidTokCsvSource(name, files, media_root, spec.seed, consumer, infinite, spec.max_skip_fraction)
    if src.kind is SourceKind.folder:
        return FolderSource(name, files, spec.root, spec.seed, consumer, infinite, **checks)
    if all(isinstance(shard, Path) for shard in files):
        return TarSource(name, files, spec.seed, consumer, infinite, **checks)
    return StreamTarSource(name, files, spec.stream, spec.seed, consumer, infinite, **checks)


def check_sources_usable(spec: LoaderSpec, tokenizer: DivotTextTokenizer | None) -> None:
    """Make one example of every source, in this process, so that a source without a
    single usable sample stops the run at start-up with a message naming it (rather than
    in a dataloader worker). Reads records in the source's order until one works; a
    streamed source with a shuffle buffer of one, so that the check downloads no more
    than it reads (the order does not matter here)."""
    checked = replace(spec, stream=replace(spec.stream, shuffle_buffer=1))
    for name, src in spec.sources.items():
        source = open_source(checked, name, src, Consumer(), infinite=False)
        source.skipped.LOG_FIRST = 0  # the workers log the skips when they read them
        stream = ExampleStream(source, example_maker(spec, src, tokenizer))
        if next(iter(stream), None) is None:
            skipped = source.skipped.records()
            why = (
                f"all {skipped} of its records were skipped ({source.skip_summary()})"
                if skipped
                else "it is empty"
            )
            paths = [shard_display(path) for path in src.paths]  # no signed URL's query or user:pass
            raise DataError(
                f"{spec.split} source {name} has no usable sample: {why}; "
                f"paths {paths}{f' and shard list {src.shard_list}' if src.shard_list else ''} "
                f"under {spec.root}, kind {src.kind.value}"
                f"{f', task {src.task.value}' if src.task is not None else ''}."
            )


def build_mixer(
    spec: LoaderSpec, tokenizer: DivotTextTokenizer | None, consumer: Consumer, slot: int = 0, slots: int = 1
) -> Mixer:
    """The mixer of one reader: ``consumer`` (rank x worker) picks its share of every
    source and seeds "sample" mode's per-example picks; "batch" mode's per-batch source
    picks depend only on the seed and the reader's worker ``slot`` of ``slots`` (which of
    its rank's batches it makes), so every rank's k-th batch comes from the same source."""
    sources = []
    for name, src in spec.sources.items():
        source = open_source(spec, name, src, consumer, spec.infinite)
        stream = ExampleStream(source, example_maker(spec, src, tokenizer))
        sources.append(MixSource(name, stream, src.weight, src.batch_size))
    # examples of another kind have no tokens to balance batches by
    extra = {} if spec.example_kind is None else {"length_of": lambda example: 1}
    # the budget counts a batch's tokens as the model works on them: padded, examples x
    # longest; packed, the real tokens (each sample attends only to itself, padding-free
    # with block masks) -- so ranks of a step carry similar work (tools/bench/balance.py)
    tokens_of = padded_tokens if spec.pack_length is None else sum
    return Mixer(
        sources,
        seed=stable_seed(spec.seed, "mix", consumer.index, consumer.count),
        mode=spec.mixing.value,
        batch_size=spec.batch_size,
        tokens_per_batch=spec.tokens_per_batch,
        schedule=BatchSchedule(stable_seed(spec.seed, "batch-source"), first=slot, every=slots),
        tokens_of=tokens_of,
        **extra,
    )


@contextlib.contextmanager
def picklable_errors():
    """Re-raise an exception that cannot be pickled as a RuntimeError with its type, message
    and traceback: torch sends a worker's exception to its rank by pickling it, and one that
    does not pickle (a class defined inside a function, an attribute holding a lock) leaves
    the rank waiting for that worker forever."""
    try:
        yield
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # any pickling failure: send the text instead
            text = "".join(traceback.format_exception(exc)).rstrip()
            raise RuntimeError(f"{type(exc).__qualname__}: {exc}\n(original traceback)\n{text}") from None
        raise


class _WorkerStreams(torch.utils.data.IterableDataset):
    """What each dataloader worker runs: its slot's mixer, yielding (batch, slot, state)."""

    def __init__(
        self,
        spec: LoaderSpec,
        tokenizer: DivotTextTokenizer | None,
        rank: int,
        world_size: int,
        num_workers: int,
        slot_states: list[dict | None],
        first_slot: int,
    ):
        super().__init__()
        self.spec, self.tokenizer = spec, tokenizer
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.slot_states, self.first_slot = slot_states, first_slot

    def __iter__(self):
        with picklable_errors():
            yield from self._batches()

    def _batches(self):
        info = torch.utils.data.get_worker_info()
        physical = info.id if info is not None else 0
        slot = (physical + self.first_slot) % max(1, self.num_workers)
        consumer = Consumer.of(self.rank, self.world_size, slot, self.num_workers)
        mixer = build_mixer(self.spec, self.tokenizer, consumer, slot, max(1, self.num_workers))
        if self.slot_states[slot] is not None:
            mixer.load_state_dict(self.slot_states[slot])
        for examples in mixer:
            if self.spec.example_kind is not None:
                batch = self.spec.example_kind.collate(examples)
            elif self.spec.pack_length:
                batch = pack(examples, self.tokenizer.pad_id, self.spec.pack_length)
            else:
                batch = collate(examples, self.tokenizer.pad_id)
            yield batch, slot, mixer.state_dict()
        yield None, slot, mixer.state_dict()  # end of a finite stream: its final counts


class DivotLoader:
    """Iterable over batches of one rank; ``state_dict``/``load_state_dict`` resume it.

    Args:
        stateful: keep position across iterations (training). A validation loader is not
            stateful: every iteration is a fresh pass over its (finite) sources.
        pin_memory: hand out batches in page-locked memory (training on CUDA), so the
            trainer's ``non_blocking`` copies to the GPU are asynchronous.
    """

    def __init__(
        self,
        spec: LoaderSpec,
        tokenizer: DivotTextTokenizer | None,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        stateful: bool = True,
        pin_memory: bool = False,
    ):
        self.spec, self.tokenizer = spec, tokenizer
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.stateful, self.pin_memory = stateful, pin_memory
        self._slots = max(1, num_workers)
        self._slot_states: list[dict | None] = [None] * self._slots  # as of the last batch handed out
        self._final_states: list[dict | None] = [None] * self._slots  # latest seen, for counts
        self._next_slot = 0

    def __iter__(self) -> Iterator[dict]:
        states = self._slot_states if self.stateful else [None] * self._slots
        first = self._next_slot if self.stateful else 0
        dataset = _WorkerStreams(
            self.spec, self.tokenizer, self.rank, self.world_size, self.num_workers, states, first
        )
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=self.num_workers,
            prefetch_factor=2 if self.num_workers else None,
            persistent_workers=False,
            pin_memory=self.pin_memory,
            worker_init_fn=worker_init_fn(),  # stop signals: see worker_signals
        )
        self._final_states = [None] * self._slots
        for batch, slot, state in loader:
            if batch is None:
                self._final_states[slot] = state
                continue
            if self.stateful:
                self._slot_states[slot] = state
                self._next_slot = (slot + 1) % self._slots
            self._final_states[slot] = state
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {
            "slot_states": copy.deepcopy(self._slot_states),
            "next_slot": self._next_slot,
            "num_workers": self.num_workers,
            "world_size": self.world_size,
            "rank": self.rank,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["num_workers"], state["world_size"]) != (self.num_workers, self.world_size):
            raise ValueError(
                f"the data state was saved with {state['world_size']} ranks x {state['num_workers']} workers; "
                f"resuming needs the same layout (now {self.world_size} x {self.num_workers}) to continue the "
                "exact stream"
            )
        self._slot_states = copy.deepcopy(state["slot_states"])
        self._final_states = copy.deepcopy(state["slot_states"])
        self._next_slot = int(state["next_slot"])

    def skip_counts(self) -> dict[str, int]:
        """Skipped samples per reason (plus ``truncated_kept``), over the batches handed
        out so far, summed over this rank's workers and sources."""
        total: Counter[str] = Counter()
        for state in self._final_states:
            for stream in (state or {}).get("streams", {}).values():
                total.update(stream.get("skipped", {}))
        return dict(total)


# ----------------------------------------------------------------------- building


def loader_spec(
    data_cfg: DataConfig,
    tokens_per_clip: int,
    frames_per_clip: int,
    image_size: int,
    split: str = "train",
    example_kind: ExampleKind | None = None,
) -> LoaderSpec:
    """The plain description of ``cfg.data`` for a split, checked against the tokenizer.

    With an ``example_kind`` (see ``divot_llm.data.detok_examples.detok_loader_spec``)
    examples are of that kind; the tokenizer-clip arguments then describe its video.

    Raises:
        DataError: no sources, or a source whose paths match nothing.
        ValueError: the clip sampling gives a different number of frames than the video
            tokenizer takes; a bad pack length; packing or a feature cache with an
            ``example_kind``; a source that cannot feed the examples (``check_source_kinds``).
    """
    sources = data_cfg.sources if split == "train" else data_cfg.val_sources
    if not sources:
        raise DataError(
            f"no {split} data sources configured (data.{'sources' if split == 'train' else 'val_sources'})"
        )
    packs = example_kind is not None and getattr(example_kind, "packs", False)
    if example_kind is not None and ((data_cfg.packing and not packs) or data_cfg.feature_cache):
        raise ValueError(
            "de-tokenizer examples are decoded pixels: set data.packing=false and data.feature_cache=null"
        )
    if example_kind is not None and data_cfg.resize_kernel != "pil":
        raise ValueError(
            f"data.resize_kernel={data_cfg.resize_kernel} is for the LLM stages' clips (token sequences and "
            f"feature caches); {type(example_kind).__name__} examples resize with pil: set data.resize_kernel=pil"
        )
    check_source_kinds(sources, example_kind)
    sampled = len(clip_positions(data_cfg.frames_per_window, data_cfg.frame_stride))
    if example_kind is None and sampled != frames_per_clip:
        raise ValueError(
            f"clip sampling gives {sampled} frames (window {data_cfg.frames_per_window}, stride "
            f"{data_cfg.frame_stride}) but the video tokenizer takes {frames_per_clip}"
        )
    spec = LoaderSpec(
        root=Path(data_cfg.root).resolve(),
        sources=dict(sources),
        seed=data_cfg.seed,
        infinite=data_cfg.infinite and split == "train",
        mixing=data_cfg.mixing,
        batch_size=data_cfg.batch_size,
        tokens_per_batch=data_cfg.tokens_per_batch,
        pack_length=pack_length_of(data_cfg, sources),
        tokens_per_clip=tokens_per_clip,
        frames_per_clip=frames_per_clip,
        image_size=image_size,
        frames_per_window=data_cfg.frames_per_window,
        sample_fps=data_cfg.fps,
        stride=data_cfg.frame_stride,
        feature_cache=data_cfg.feature_cache,
        resize_kernel=data_cfg.resize_kernel,
        split=split,
        example_kind=example_kind,
        max_skip_fraction=data_cfg.max_skip_fraction,
        stream=data_cfg.stream,
    )
    for name, source in spec.sources.items():  # fail at start-up, naming the source, not in a worker
        source_files(spec, name, source)
    return spec


def check_source_kinds(sources: dict[str, SourceConfig], example_kind: ExampleKind | None) -> None:
    """Refuse, naming the source, what cannot feed the examples: a source without a task
    in an LLM stage (its task picks the sequence template), a vidtok_csv source (no text)
    where examples need text.

    Raises:
        ValueError: the first such source.
    """
    for name, src in sources.items():
        if src.kind is SourceKind.vidtok_csv and (example_kind is None or example_kind.needs_text):
            raise ValueError(
                f"source {name} is a vidtok_csv source: videos without text, which only VidTok "
                "examples (stage=vidtok) read"
            )
        if example_kind is None and src.task is None:
            raise ValueError(
                f"source {name} has no task: the LLM stages need one "
                "(pretrain_comp | pretrain_gen | sft_comp | sft_gen)"
            )


def build_loader(
    data_cfg: DataConfig,
    tokenizer: DivotTextTokenizer | None,
    tokens_per_clip: int,
    frames_per_clip: int,
    image_size: int,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    cache_info: CacheInfo | None = None,
    example_kind: ExampleKind | None = None,
    pin_memory: bool = False,
) -> DivotLoader:
    """The loader of one rank for ``cfg.data`` (``split="val"``: ``val_sources``, one pass).

    With ``data.feature_cache`` set, ``cache_info`` (what this run's tokenizer and sampling
    would produce, see ``feature_cache.expected_info``) must be given and match the cache.
    With an ``example_kind`` it yields batches of that kind (``tokenizer`` may then be
    None; see ``divot_llm.data.detok_examples``). ``pin_memory``: when training on CUDA.

    Raises:
        DataError / ValueError: see ``loader_spec``; a cache that does not match.
    """
    spec = loader_spec(data_cfg, tokens_per_clip, frames_per_clip, image_size, split, example_kind)
    if spec.feature_cache:
        if cache_info is None:
            raise ValueError(
                "data.feature_cache is set: pass the run's cache_info so the cache can be checked"
            )
        sources = {cache_group(split, name): source_key(split, name) for name in spec.sources}
        FeatureCache(spec.feature_cache).check(cache_info, sources)  # built for this run, and for its sources
    check_sources_usable(spec, tokenizer)
    workers, stateful = data_cfg.num_workers, split == "train"
    return DivotLoader(spec, tokenizer, rank, world_size, workers, stateful=stateful, pin_memory=pin_memory)


def pack_length_of(data_cfg: DataConfig, sources: dict[str, SourceConfig]) -> int | None:
    """The packed row length of ``sources`` (None: no packing).

    Raises:
        ValueError: ``data.pack_length`` is shorter than a source's ``max_length``.
    """
    if not data_cfg.packing:
        return None
    longest = max(src.max_length for src in sources.values())
    length = data_cfg.pack_length or longest
    if length < longest:
        raise ValueError(f"data.pack_length {length} is shorter than a source's max_length {longest}")
    return length
