"""Hand-built training samples in the reference's templates (divot-reference.md §5.8),
collated the way ``DivotLLM.forward`` expects. The real data pipeline lives in
``divot_llm/data``; these keep the model tests independent of it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from divot_llm.text import (
    FRAME_END,
    FRAME_START,
    IGNORE_INDEX,
    QUERY,
    VID_END,
    VID_START,
    frame_tokens,
    video_tokens,
)


@dataclass
class Sample:
    input_ids: list[int]
    attention_mask: list[int]
    labels: list[int]
    ids_cmp_mask: list[bool]
    ids_gen_mask: list[bool]
    feats: torch.Tensor  # (C, N, D)
    is_cmp: bool  # the clips are comprehension inputs (else generation targets)


def comprehension_sample(tok, n: int, feats_cnd: torch.Tensor, caption: str) -> Sample:
    """``[bos] <vid>{clip x C}</vid> caption [eos]``: caption and eos supervised."""
    video = tok.encode(video_tokens(feats_cnd.shape[0], n))
    text = tok.encode(caption) + [tok.eos_id]
    ids = [tok.bos_id, *video, *text]
    frame_ids = set(tok.frame_token_ids(n))
    return Sample(
        input_ids=ids,
        attention_mask=[1] * len(ids),
        labels=[IGNORE_INDEX] * (1 + len(video)) + text,
        ids_cmp_mask=[i in frame_ids for i in ids],
        ids_gen_mask=[False] * len(ids),
        feats=feats_cnd,
        is_cmp=True,
    )


def generation_sample(tok, n: int, feats_1nd: torch.Tensor, caption: str) -> Sample:
    """``[bos] caption <vid><frame>{N}</frame></vid> [eos]``: only eos supervised, the N
    queries attend bidirectionally."""
    head = [tok.bos_id, *tok.encode(caption), *tok.encode(VID_START + FRAME_START)]
    queries = tok.encode(frame_tokens(n))
    tail = [*tok.encode(FRAME_END + VID_END), tok.eos_id]
    ids = [*head, *queries, *tail]
    is_query = [False] * len(head) + [True] * n + [False] * len(tail)
    return Sample(
        input_ids=ids,
        attention_mask=[QUERY if q else 1 for q in is_query],
        labels=[IGNORE_INDEX] * (len(ids) - 1) + [tok.eos_id],
        ids_cmp_mask=[False] * len(ids),
        ids_gen_mask=is_query,
        feats=feats_1nd,
        is_cmp=False,
    )


def collate(samples: list[Sample], pad_id: int, pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad tokens, pad clips with zero features and False masks."""
    length = pad_to or max(len(s.input_ids) for s in samples)
    max_clips = max(s.feats.shape[0] for s in samples)
    _, n, d = samples[0].feats.shape
    b = len(samples)
    batch = {
        "input_ids": torch.full((b, length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(b, length, dtype=torch.long),
        "labels": torch.full((b, length), IGNORE_INDEX, dtype=torch.long),
        "ids_cmp_mask": torch.zeros(b, length, dtype=torch.bool),
        "ids_gen_mask": torch.zeros(b, length, dtype=torch.bool),
        "video_feats": torch.zeros(b, max_clips, n, d),
        "embeds_cmp_mask": torch.zeros(b, max_clips, dtype=torch.bool),
        "embeds_gen_mask": torch.zeros(b, max_clips, dtype=torch.bool),
    }
    for row, s in enumerate(samples):
        t, c = len(s.input_ids), s.feats.shape[0]
        batch["input_ids"][row, :t] = torch.tensor(s.input_ids)
        batch["attention_mask"][row, :t] = torch.tensor(s.attention_mask)
        batch["labels"][row, :t] = torch.tensor(s.labels)
        batch["ids_cmp_mask"][row, :t] = torch.tensor(s.ids_cmp_mask)
        batch["ids_gen_mask"][row, :t] = torch.tensor(s.ids_gen_mask)
        batch["video_feats"][row, :c] = s.feats
        batch["embeds_cmp_mask" if s.is_cmp else "embeds_gen_mask"][row, :c] = True
    return batch


def perturb_trainable(model: torch.nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Stand-in for training: add noise to every trainable parameter, so LoRA B is no
    longer zero, the trained norm copies differ from the originals, and so on."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
