"""Pad (or pack) a list of examples into one batch.

The keys of a batch:

* ``input_ids``, ``labels``, ``attention_mask``, ``ids_cmp_mask``, ``ids_gen_mask``
  ``(B, T)``: text right-padded to the longest row (pad id, labels -100, attention 0,
  masks False); packed batches add ``segment_ids`` and ``position_ids`` ``(B, T)``.
* ``embeds_cmp_mask``, ``embeds_gen_mask`` ``(B, C)``: which of up to C clip slots per row
  are read (comprehension) or written (generation); padded slots are False in both.
* the clips, one of:

  - ``frames`` ``(G, F, 3, S, S)`` uint8: only the G real clips (G = the True entries of
    ``embeds_cmp_mask | embeds_gen_mask``), in (row, clip) order -- the order that mask
    selects them in. Gathered here, in the dataloader worker, so the trainer copies them
    to the accelerator as they are (no padded clip slots to move or to skip) and scatters
    their features into ``(B, C, N, D)`` there.
  - ``video_feats`` ``(B, C, N, D)`` (from a feature cache): padded to C clips with zeros,
    the layout the model reads as is.
* ``sources``, ``keys``: where each row came from (``+``-joined when packed).
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
    for key in ("embeds_cmp_mask", "embeds_gen_mask"):
        batch[key] = torch.zeros((len(examples), clips), dtype=torch.bool)
        for row, example in enumerate(examples):
            batch[key][row, : len(example[key])] = example[key]
    if "video_feats" in examples[0]:  # cached features: padded clip slots
        first = examples[0]["video_feats"]  # (C, N, D)
        batch["video_feats"] = torch.zeros((len(examples), clips, *first.shape[1:]), dtype=first.dtype)
        for row, example in enumerate(examples):
            batch["video_feats"][row, : len(example["video_feats"])] = example["video_feats"]
    else:  # every clip of an example is real (read or written): the real clips, in order
        batch["frames"] = torch.cat([e["frames"] for e in examples])  # (G, F, 3, S, S)
    batch["sources"] = [e["source"] for e in examples]
    batch["keys"] = [e["key"] for e in examples]
    return batch


def pack_rows(lengths: list[int], pack_length: int) -> list[list[int]]:
    """Which examples (by index) share each packed row: rows fill in order (next-fit);
    an example longer than ``pack_length`` gets a row of its own (``pack`` refuses it)."""
    rows: list[list[int]] = [[]]
    used = 0
    for index, length in enumerate(lengths):
        if used + length > pack_length and rows[-1]:
            rows.append([])
            used = 0
        rows[-1].append(index)
        used += length
    return rows


def pack(examples: list[dict], pad_id: int, pack_length: int) -> dict:
    """Sequence packing: several examples per row, each a segment that attends only to
    itself (``segment_ids``, 1-based, 0 = padding) with positions restarting at 0
    (``position_ids``). Rows fill in order (next-fit, ``pack_rows``), so clips keep their
    global (example, clip) order and the losses equal those of the unpacked batch.
    """
    lengths = [len(e["input_ids"]) for e in examples]
    for example, length in zip(examples, lengths, strict=True):
        if length > pack_length:
            raise ValueError(f"example {example['key']} has {length} tokens > pack_length {pack_length}")
    rows = pack_rows(lengths, pack_length)
    return collate([_concatenate([examples[i] for i in row]) for row in rows], pad_id)


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
