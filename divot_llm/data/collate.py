"""Pad a list of examples into one batch.

Text is right-padded to the longest sequence (pad id, labels -100, attention 0, masks
False); clips are padded to the most clips in the batch with zero frames and False clip
masks, so ``frames`` is (B, C, F, 3, S, S) and ``embeds_*_mask`` is (B, C).
"""

from __future__ import annotations

import torch

from divot_llm.text.templates import IGNORE_INDEX, PADDING

TEXT_KEYS = ("input_ids", "labels", "attention_mask", "ids_cmp_mask", "ids_gen_mask")


def collate(examples: list[dict], pad_id: int) -> dict:
    if not examples:
        raise ValueError("cannot collate an empty batch")
    length = max(len(e["input_ids"]) for e in examples)
    clips = max(e["frames"].shape[0] for e in examples)
    fill = {"input_ids": pad_id, "labels": IGNORE_INDEX, "attention_mask": PADDING, "ids_cmp_mask": False,
            "ids_gen_mask": False}  # fmt: skip
    batch: dict = {}
    for key in TEXT_KEYS:
        first = examples[0][key]
        out = torch.full((len(examples), length), fill[key], dtype=first.dtype)
        for row, example in enumerate(examples):
            out[row, : len(example[key])] = example[key]
        batch[key] = out
    frame_shape = examples[0]["frames"].shape[1:]  # (F, 3, S, S)
    batch["frames"] = torch.zeros((len(examples), clips, *frame_shape), dtype=examples[0]["frames"].dtype)
    for key in ("embeds_cmp_mask", "embeds_gen_mask"):
        batch[key] = torch.zeros((len(examples), clips), dtype=torch.bool)
    for row, example in enumerate(examples):
        count = example["frames"].shape[0]
        batch["frames"][row, :count] = example["frames"]
        batch["embeds_cmp_mask"][row, :count] = example["embeds_cmp_mask"]
        batch["embeds_gen_mask"][row, :count] = example["embeds_gen_mask"]
    batch["sources"] = [e["source"] for e in examples]
    batch["keys"] = [e["key"] for e in examples]
    return batch
