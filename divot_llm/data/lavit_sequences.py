"""Video-LaVIT LLM examples: token sequences of keyframe + motion codes and text, read from a
tokens cache (``divot-data motion-cache --tokens`` with a keyframe tokenizer: every clip's
motion codes and keyframe codes, every image's keyframe codes; ``motion_cache``).

An example is one sample of a source, its sequence picked by the source's task
(``divot_llm.text.lavit_templates``):

* ``pretrain_comp``: the clips -> a caption; ``sft_comp``: the clips -> the QA turns (chat);
* ``pretrain_gen`` / ``sft_gen``: a caption -> the clip: text to video or, for half of the
  samples (drawn per sample and epoch), image to video (the keyframe in the prompt, the
  motion the target); an image: text to image; with ``num_clips`` > 1, a long video (the
  caption before each clip).

A video's clips are ``num_clips`` consecutive ones of its cached clips (fewer if it has
fewer), from a random start per (seed, sample, epoch), or from ``start_index``; an image is
one keyframe. A sequence longer than the source's ``max_length`` is skipped
(``too_long``), as are samples the cache recorded without clips. Sharding over ranks and
workers, mixing, skip counts and the exact resumable state are the loader's
(``build_lavit_loader``). Batches (right-padded to the longest row)::

    input_ids, labels, attention_mask   (B, T) int64   pad id / -100 / 0 beyond a row
    visual_mask, motion_mask            (B, T) bool    keyframe-code / motion-code positions
    segment_ids, position_ids           (B, T) int64   packed batches only (data.packing)
    sources, keys                                      (``+``-joined when packed)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch

from divot_llm.config.schema import DataConfig, SourceConfig, Task
from divot_llm.data.clip_sampling import check_media_size
from divot_llm.data.collate import PACKED_KEYS, pack_rows
from divot_llm.data.errors import MediaError
from divot_llm.data.loader import DivotLoader, build_loader, cache_group, pack_length_of, sample_rngs
from divot_llm.data.motion_cache import MotionCache, load_motion_record
from divot_llm.data.motion_examples import clip_index
from divot_llm.data.sequences import SequenceTooLong
from divot_llm.data.sources import RawSample
from divot_llm.text.lavit_templates import (
    ClipTokens,
    LaVITSequence,
    image_to_video,
    long_video,
    text_to_video,
    video_comprehension,
)
from divot_llm.text.lavit_tokenizer import LaVITTextTokenizer
from divot_llm.text.lavit_vocab import LaVITVocab
from divot_llm.text.templates import IGNORE_INDEX

BATCH_KEYS = ("input_ids", "labels", "attention_mask", "visual_mask", "motion_mask")
I2V_SHARE = 0.5  # of single-clip generation samples: image to video instead of text to video


@dataclass(frozen=True)
class LaVITSequenceSpec:
    """The LLM's sequences (the loader's ``example_kind``).

    Args:
        vocab: the id layout (the model's).
        tokenizer: the text tokenizer.
        cache, split: the tokens cache and the split whose samples these are;
            ``build_lavit_loader`` sets them from ``data.motion_cache``.
    """

    vocab: LaVITVocab
    tokenizer: LaVITTextTokenizer
    cache: str | None = None
    split: str = "train"
    pack_length: int | None = None  # data.packing: rows of this many ids (``build_lavit_loader`` sets it)
    needs_text: ClassVar[bool] = True
    packs: ClassVar[bool] = True  # collate packs rows itself (the loader's ``ExampleKind``)

    def example(self, raw: RawSample, source: SourceConfig, seed: int, epoch: int) -> dict:
        return lavit_example(raw, source, self, seed, epoch)

    def collate(self, examples: list[dict]) -> dict:
        if self.pack_length is not None:
            return pack_lavit(examples, self.tokenizer.pad_id, self.pack_length)
        return collate_lavit(examples, self.tokenizer.pad_id)


def sample_clips_tokens(
    raw: RawSample, source: SourceConfig, spec: LaVITSequenceSpec, rng
) -> list[ClipTokens]:
    """The sample's clips (or image) from the cache.

    Raises:
        MediaError: not in the cache, the size filters, a sample cached without clips, a
            cache without keyframe codes.
    """
    record = load_motion_record(Path(spec.cache), cache_group(spec.split, raw.source), raw.key)
    if record.size is not None:
        check_media_size(*record.size, source.min_resolution, source.min_aspect_ratio)
    if record.skip is not None:
        raise MediaError(*record.skip)
    if record.keyframe_codes is None:
        raise MediaError("no_keyframe_codes", "the cache holds no keyframe codes for this sample")
    if record.values is None:  # an image
        return [ClipTokens(record.keyframe_codes[0])]
    count = min(source.num_clips, record.values.shape[0])
    first = clip_index(record.values.shape[0] - count + 1, source.start_index, rng)
    return [ClipTokens(record.keyframe_codes[k], record.values[k]) for k in range(first, first + count)]


def build_sequence(
    task: Task, clips: list[ClipTokens], raw: RawSample, spec: LaVITSequenceSpec, rng
) -> LaVITSequence:
    """The task's template over the clips and the sample's text (``rng`` picks the caption
    and, for generation, text or image to video)."""
    tok, vocab = spec.tokenizer, spec.vocab
    if task is Task.sft_comp:
        if not raw.turns:
            raise MediaError("empty_text", "sft_comp needs question/answer turns")
        return video_comprehension(tok, vocab, clips, turns=raw.turns)
    if not raw.captions:
        raise MediaError("empty_text", f"{task.value} needs a caption")
    caption = raw.captions[int(rng.integers(len(raw.captions)))]
    if task is Task.pretrain_comp:
        return video_comprehension(tok, vocab, clips, caption=caption)
    if len(clips) > 1:
        return long_video(tok, vocab, [caption] * len(clips), clips)
    if not clips[0].is_image and rng.random() < I2V_SHARE:
        return image_to_video(tok, vocab, clips[0], caption)
    return text_to_video(tok, vocab, caption, clips[0])


def lavit_example(
    raw: RawSample, source: SourceConfig, spec: LaVITSequenceSpec, seed: int, epoch: int
) -> dict:
    """One example of a raw sample (see the module docstring).

    Raises:
        MediaError: see ``sample_clips_tokens``; no text for the task. SequenceTooLong:
            longer than ``max_length``.
    """
    clip_rng, text_rng = sample_rngs(seed, raw.key, epoch)
    clips = sample_clips_tokens(raw, source, spec, clip_rng)
    seq = build_sequence(source.task, clips, raw, spec, text_rng)
    if len(seq) > source.max_length:
        raise SequenceTooLong(f"{len(seq)} tokens > max_length {source.max_length}")
    return {
        "input_ids": seq.input_ids,
        "labels": seq.labels,
        "attention_mask": seq.attention_mask,
        "visual_mask": seq.visual_mask,
        "motion_mask": seq.motion_mask,
        "source": raw.source,
        "key": raw.key,
    }


def collate_lavit(examples: list[dict], pad_id: int) -> dict:
    """Right-pad examples (or packed rows) to the longest."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    length = max(len(e["input_ids"]) for e in examples)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": 0, "visual_mask": False,
            "motion_mask": False, "segment_ids": 0, "position_ids": 0}  # fmt: skip
    batch: dict = {}
    for key in BATCH_KEYS + (PACKED_KEYS if "segment_ids" in examples[0] else ()):
        out = torch.full((len(examples), length), fill[key], dtype=examples[0][key].dtype)
        for row, example in enumerate(examples):
            out[row, : len(example[key])] = example[key]
        batch[key] = out
    batch["sources"] = [e["source"] for e in examples]
    batch["keys"] = [e["key"] for e in examples]
    return batch


def pack_lavit(examples: list[dict], pad_id: int, pack_length: int) -> dict:
    """Sequence packing as the LLM loader's (``collate.pack``): examples fill rows of at most
    ``pack_length`` ids in order, each a segment (``segment_ids`` 1-based, 0 padding) whose
    ``position_ids`` restart at 0; ``LaVITLLM`` keeps each segment to itself."""
    lengths = [len(e["input_ids"]) for e in examples]
    for example, length in zip(examples, lengths, strict=True):
        if length > pack_length:
            raise ValueError(f"example {example['key']} has {length} tokens > pack_length {pack_length}")
    rows = []
    for row in pack_rows(lengths, pack_length):
        parts = [examples[i] for i in row]
        merged = {key: torch.cat([e[key] for e in parts]) for key in BATCH_KEYS}
        merged["segment_ids"] = torch.cat(
            [torch.full((len(e["input_ids"]),), i + 1) for i, e in enumerate(parts)]
        )
        merged["position_ids"] = torch.cat([torch.arange(len(e["input_ids"])) for e in parts])
        merged["source"] = "+".join(e["source"] for e in parts)
        merged["key"] = "+".join(e["key"] for e in parts)
        rows.append(merged)
    return collate_lavit(rows, pad_id)


def check_lavit_cache(cache: MotionCache) -> None:
    """The cache holds motion codes and keyframe codes.

    Raises:
        ValueError: it holds fields, or no keyframe codes, saying how to build one.
    """
    info = cache.info
    if not info.holds_codes or info.keyframe_fingerprint is None:
        raise ValueError(
            f"{cache.dir} is not a LaVIT tokens cache (motion codes: {info.holds_codes}, keyframe codes: "
            f"{info.keyframe_fingerprint is not None}); build one with `divot-data motion-cache --tokens --out "
            "<dir> -- data=<the run's data> motion_tokenizer=<option> keyframe_tokenizer=<option>`"
        )


def build_lavit_loader(
    data_cfg: DataConfig,
    spec: LaVITSequenceSpec,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    pin_memory: bool = False,
) -> DivotLoader:
    """The LaVIT LLM loader of one rank (``split="val"``: ``val_sources``, one pass) over the
    tokens cache ``data.motion_cache`` (its data.motion must be the run's).

    Raises:
        ValueError: no cache, a cache of fields or without keyframe codes, one made for
            another data.motion. DataError / ValueError: see ``loader.loader_spec``.
    """
    if not data_cfg.motion_cache:
        raise ValueError(
            "the LaVIT LLM reads a tokens cache: build one with `divot-data motion-cache --tokens` "
            "(motion_tokenizer=... keyframe_tokenizer=...) and set data.motion_cache"
        )
    cache = MotionCache(data_cfg.motion_cache)
    check_lavit_cache(cache)
    cache.check(replace(cache.info, motion=asdict(data_cfg.motion)))  # made for these clips
    sources = data_cfg.sources if split == "train" else data_cfg.val_sources
    pack_length = pack_length_of(data_cfg, sources) if sources else None  # no sources: loader_spec says so
    spec = replace(
        spec, cache=str(Path(data_cfg.motion_cache).resolve()), split=split, pack_length=pack_length
    )
    return build_loader(data_cfg, None, 0, data_cfg.motion.clip_frames, 0, rank, world_size, split,
                        example_kind=spec, pin_memory=pin_memory)  # fmt: skip
