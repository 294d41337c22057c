"""The 4-D attention mask that lets generation queries see each other.

The data pipeline marks tokens in a 2-D integer mask: 1 = causal token, 0 = padding,
-1 = generation query. Queries come in blocks of N (the tokenizer's tokens per clip);
within a block every query attends to every other one (bidirectional), everything else
stays causal: queries see all earlier tokens, later tokens see the whole block causally.

The reference patches transformers' mask helpers to do this; we pass an explicit
additive ``(B, 1, T, T)`` mask instead, which transformers hands to SDPA/eager attention
untouched. Flash-attention-2 cannot take such a mask, so it is only usable for batches
without query blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from divot_llm.text.templates import PADDING, QUERY


def query_block_ids(is_query_bt: torch.Tensor, block_size: int) -> torch.Tensor:
    """Label each query token with a block id unique within its row; -1 elsewhere.

    Every maximal run of consecutive query tokens is cut into blocks of ``block_size``.

    Args:
        is_query_bt: ``(B, T)`` bool.
        block_size: N, queries per block.

    Returns:
        ``(B, T)`` long block ids.

    Raises:
        ValueError: a run's length is not a multiple of ``block_size`` (names the sample).
    """
    _, seq_len = is_query_bt.shape
    pos_t = torch.arange(seq_len, device=is_query_bt.device)
    prev_bt = F.pad(is_query_bt[:, :-1], (1, 0), value=False)
    next_bt = F.pad(is_query_bt[:, 1:], (0, 1), value=False)
    run_start_bt = torch.where(is_query_bt & ~prev_bt, pos_t, 0).cummax(dim=1).values  # (B, T)
    offset_bt = pos_t - run_start_bt  # position inside the current run
    bad_bt = is_query_bt & ~next_bt & ((offset_bt + 1) % block_size != 0)
    if bad_bt.any():
        sample, pos = (int(v) for v in bad_bt.nonzero()[0])
        raise ValueError(
            f"sample {sample}: the run of query tokens ending at position {pos} has length "
            f"{int(offset_bt[sample, pos]) + 1}, not a multiple of the query block size {block_size}"
        )
    block_bt = run_start_bt * seq_len + offset_bt // block_size
    return torch.where(is_query_bt, block_bt, -1)


def build_attention_mask(
    mask_bt: torch.Tensor,
    block_size: int,
    dtype: torch.dtype,
    sliding_window: int | None = None,
    segment_bt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive ``(B, 1, T, T)`` mask: 0 where a query row may attend a key, a large
    negative number elsewhere.

    Args:
        mask_bt: ``(B, T)`` integer mask with values in {1, 0, -1}.
        block_size: N, the query block length.
        dtype: The attention dtype (the model's).
        sliding_window: Mistral's window: a causal key further back than this is masked.
        segment_bt: ``(B, T)`` ids of packed samples (sequence packing): a token only
            attends to tokens of its own segment. None: one sample per row.

    Returns:
        ``(B, 1, T, T)`` tensor of ``dtype``.
    """
    _, seq_len = mask_bt.shape
    pos_t = torch.arange(seq_len, device=mask_bt.device)
    causal_tt = pos_t[:, None] >= pos_t[None, :]
    if sliding_window is not None:
        causal_tt = causal_tt & (pos_t[:, None] - pos_t[None, :] < sliding_window)
    key_valid_bt = mask_bt != PADDING
    allowed_btt = causal_tt[None] & key_valid_bt[:, None, :]
    if segment_bt is not None:  # packed rows: samples never see each other
        allowed_btt = allowed_btt & (segment_bt[:, :, None] == segment_bt[:, None, :])

    block_bt = query_block_ids(mask_bt == QUERY, block_size)
    same_block_btt = (block_bt[:, :, None] == block_bt[:, None, :]) & (block_bt[:, :, None] >= 0)
    # The diagonal keeps every row non-empty (a padded row would otherwise be all-masked
    # and softmax to NaN); padded rows are never read, so what they see is irrelevant.
    allowed_btt = allowed_btt | same_block_btt | torch.eye(seq_len, dtype=torch.bool, device=mask_bt.device)

    additive = torch.zeros(allowed_btt.shape, dtype=dtype, device=mask_bt.device)
    additive.masked_fill_(~allowed_btt, torch.finfo(dtype).min)
    return additive.unsqueeze(1)
