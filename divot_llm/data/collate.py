"""Pad a list of examples into one batch.

Text is right-padded to the longest sequence (pad id, labels -100, attention 0, masks
False); clips are padded to the most clips in the batch with zero frames and False clip
masks, so ``frames`` is (B, C, F, 3, S, S) (uint8 from the loader) -- or, from a feature
cache, ``video_feats`` is (B, C, N, D) -- and ``embeds_*_mask`` is (B, C).
"""

from __future__ import annotations

import torch

from divot_llm.text.templates import IGNORE_INDEX, PADDING

TEXT_KEYS = ("input_ids", "labels", "attention_mask", "ids_cmp_mask", "ids_gen_mask")
PACKED_KEYS = ("segment_ids", "position_ids")  # present only in packed batches


def collate(examples: list[dict], pad_id: int) -> dict:
    if not examples:
        raise ValueError("cannot collate an empty batch")
    length = max(len(e["input_ids"]) for e in examples)
    clips = max(len(e["embeds_cmp_mask"]) for e in examples)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": PADDING, "ids_cmp_mask": False,
            "ids_gen_mask": False, "segment_ids": 0, "position_ids": 0}  # fmt: skip
    batch: dict = {}
    keys = TEXT_KEYS + (PACKED_KEYS if "segment_ids" in examples[0] else ())
    for key in keys:
        first = examples[0][key]
        out = torch.full((len(examples), length), fill[key], dtype=first.dtype)
        for row, example in enumerate(examples):
            out[row, : len(example[key])] = example[key]
        batch[key] = out
    media = "video_feats" if "video_feats" in examples[0] else "frames"  # cached features or pixels
    shape = examples[0][media].shape[1:]  # (F, 3, S, S) or (N, D)
    batch[media] = torch.zeros((len(examples), clips, *shape), dtype=examples[0][media].dtype)
    for key in ("embeds_cmp_mask", "embeds_gen_mask"):
        batch[key] = torch.zeros((len(examples), clips), dtype=torch.bool)
    for row, example in enumerate(examples):
        count = example[media].shape[0]
        batch[media][row, :count] = example[media]
        batch["embeds_cmp_mask"][row, :count] = example["embeds_cmp_mask"]
        batch["embeds_gen_mask"][row, :count] = example["embeds_gen_mask"]
    batch["sources"] = [e["source"] for e in examples]
    batch["keys"] = [e["key"] for e in examples]
    return batch


def pack(examples: list[dict], pad_id: int, pack_length: int) -> dict:
    """Sequence packing: several examples per row, each a segment that attends only to
    itself (``segment_ids``, 1-based, 0 = padding) with positions restarting at 0
    (``position_ids``). Rows fill in order (next-fit), so clips keep their global
    (example, clip) order and the losses equal those of the unpacked batch.
    """
    rows: list[list[dict]] = [[]]
    used = 0
    for example in examples:
        length = len(example["input_ids"])
        if length > pack_length:
            raise ValueError(f"example {example['key']} has {length} tokens > pack_length {pack_length}")
        if used + length > pack_length and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append(example)
        used += length
    return collate([_concatenate(row) for row in rows], pad_id)


def _concatenate(row: list[dict]) -> dict:
    """One packed row as a single example (plus segment and position ids)."""
    merged = {
        key: torch.cat([e[key] for e in row]) for key in (*TEXT_KEYS, "embeds_cmp_mask", "embeds_gen_mask")
    }
    media = "video_feats" if "video_feats" in row[0] else "frames"
    merged[media] = torch.cat([e[media] for e in row])
    merged["segment_ids"] = torch.cat([torch.full((len(e["input_ids"]),), i + 1) for i, e in enumerate(row)])
    merged["position_ids"] = torch.cat([torch.arange(len(e["input_ids"])) for e in row])
    merged["source"] = "+".join(e["source"] for e in row)
    merged["key"] = "+".join(e["key"] for e in row)
    return merged
