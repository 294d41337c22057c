"""Who attends to whom: one FlexAttention ``mask_mod`` for every batch layout, and the
choice of attention kernel that runs it.

The data pipeline marks tokens in a 2-D integer mask: 1 = causal token, 0 = padding,
-1 = generation query. Queries come in blocks of N (the tokenizer's tokens per clip);
within a block every query attends to every other one (bidirectional), everything else
stays causal: queries see all earlier tokens, later tokens see the whole block causally.
With sequence packing a row holds several samples (``segment_ids``) that never see each
other; Mistral's sliding window bounds how far back a causal key may be.

``AttentionLayout`` holds that as per-token tensors and ``mask_mod`` is the single
definition of the rule (the reference patches transformers' mask helpers instead; Show-o's
omni-attention is the FlexAttention precedent). It is used two ways:

* on a GPU, as a FlexAttention ``BlockMask`` (``create_block_mask``): fully masked
  128 x 128 tiles -- other samples of a packed row, the future -- are skipped, and
  transformers hands a 4-D BlockMask to ``flex_attention`` untouched;
* elsewhere (CPU, no flex), the same ``mask_mod`` evaluated on every (query, key) pair
  into a dense ``(B, 1, T, T)`` mask for SDPA (bool) or eager attention (additive).

Flash-attention-2 takes no mask at all: it serves batches without query blocks through
its variable-length path (padding unpadded by transformers, packed rows flattened into one
row whose restarting ``position_ids`` mark the samples); a batch with query blocks falls
back to SDPA with the dense mask (``attention_kernel``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from divot_llm.config.schema import ATTN_IMPLEMENTATIONS
from divot_llm.text.templates import PADDING, QUERY

logger = logging.getLogger(__name__)

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


@dataclass(frozen=True)
class AttentionLayout:
    """Per-token description of a batch's attention pattern (all ``(B, T)``)."""

    key_valid_bt: torch.Tensor  # bool: a real token (padding is never attended to)
    segment_bt: torch.Tensor  # long: packed sample id (one id per row when not packed)
    block_bt: torch.Tensor  # long: query block id, -1 for other tokens
    sliding_window: int | None  # a causal key further back than this is masked

    @classmethod
    def from_batch(
        cls,
        mask_bt: torch.Tensor,
        block_size: int,
        sliding_window: int | None = None,
        segment_bt: torch.Tensor | None = None,
    ) -> AttentionLayout:
        """The layout of a batch.

        Args:
            mask_bt: ``(B, T)`` integer mask with values in {1, 0, -1}.
            block_size: N, the query block length.
            sliding_window: Mistral's window (None: unbounded).
            segment_bt: ``(B, T)`` ids of packed samples; None: one sample per row.

        Raises:
            ValueError: a query run is not a multiple of ``block_size``.
        """
        if segment_bt is None:
            segment_bt = torch.zeros_like(mask_bt, dtype=torch.long)
        return cls(
            key_valid_bt=mask_bt != PADDING,
            segment_bt=segment_bt.long(),
            block_bt=query_block_ids(mask_bt == QUERY, block_size),
            sliding_window=sliding_window,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.key_valid_bt.shape)

    def mask_mod(self) -> MaskMod:
        """FlexAttention ``mask_mod(b, h, q_idx, kv_idx) -> bool``: may query ``q_idx``
        of row ``b`` attend to key ``kv_idx``? The same for every head ``h``.

        A key is seen when it is causal (within the window), real and of the query's own
        sample, or when both tokens are in the same query block (bidirectional). The
        diagonal is always allowed: it keeps every row non-empty (a padded query row would
        otherwise be all-masked, and SDPA softmaxes that to NaN); padded rows are never
        read, so what they see is irrelevant.
        """
        valid_bt, segment_bt, block_bt = self.key_valid_bt, self.segment_bt, self.block_bt
        window = self.sliding_window

        def mask_mod(
            b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
        ) -> torch.Tensor:
            causal = q_idx >= kv_idx
            if window is not None:
                causal = causal & (q_idx - kv_idx < window)
            seen = causal & valid_bt[b, kv_idx] & (segment_bt[b, q_idx] == segment_bt[b, kv_idx])
            same_block = (block_bt[b, q_idx] == block_bt[b, kv_idx]) & (block_bt[b, q_idx] >= 0)
            return seen | same_block | (q_idx == kv_idx)

        return mask_mod

    def dense(self) -> torch.Tensor:
        """``mask_mod`` evaluated on every (query, key) pair at once (broadcast indices
        instead of ``create_mask``'s vmap): ``(B, 1, T, T)`` bool, True = attend."""
        batch, seq_len = self.shape
        device = self.key_valid_bt.device
        b = torch.arange(batch, device=device)[:, None, None, None]
        h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
        q_idx = torch.arange(seq_len, device=device)[None, None, :, None]
        kv_idx = torch.arange(seq_len, device=device)[None, None, None, :]
        return self.mask_mod()(b, h, q_idx, kv_idx)

    def block_mask(self, compile_mask: bool = True):
        """The FlexAttention ``BlockMask`` of ``mask_mod`` (``compile_mask`` builds it with
        a compiled kernel, as transformers does on GPUs: no ``(B, T, T)`` intermediate)."""
        from torch.nn.attention.flex_attention import create_block_mask

        batch, seq_len = self.shape
        return create_block_mask(
            self.mask_mod(),
            B=batch,
            H=None,
            Q_LEN=seq_len,
            KV_LEN=seq_len,
            device=self.key_valid_bt.device,
            _compile=compile_mask,
        )


def build_attention_mask(
    mask_bt: torch.Tensor,
    block_size: int,
    dtype: torch.dtype,
    sliding_window: int | None = None,
    segment_bt: torch.Tensor | None = None,
) -> torch.Tensor:
    """Additive ``(B, 1, T, T)`` mask of ``AttentionLayout.mask_mod`` (for eager
    attention): 0 where a query row may attend a key, a large negative number elsewhere.

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
    allowed_b1tt = AttentionLayout.from_batch(mask_bt, block_size, sliding_window, segment_bt).dense()
    return additive_mask(allowed_b1tt, dtype)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``allowed``, the dtype's most negative number elsewhere."""
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return additive.masked_fill_(~allowed, torch.finfo(dtype).min)


# ------------------------------------------------------------------ kernel choice

# What ``DivotLLM.last_attention_kernel`` reports.
FLEX = "flex_attention"  # BlockMask through torch's FlexAttention
SDPA_DENSE = "sdpa+dense_mask"  # the mask_mod materialised for SDPA
EAGER_DENSE = "eager+dense_mask"  # ... for eager attention (additive)
SDPA_CAUSAL = "sdpa_causal"  # transformers' own causal (+ padding) mask
EAGER_CAUSAL = "eager_causal"
FLASH = "flash_attention_2"  # no padding, no packing: plain causal flash
FLASH_VARLEN = "flash_attention_2_varlen"  # padded or packed rows, variable-length kernel

# The transformers attention implementation that runs each kernel.
KERNEL_IMPLEMENTATION = {
    FLEX: "flex_attention",
    SDPA_DENSE: "sdpa",
    EAGER_DENSE: "eager",
    SDPA_CAUSAL: "sdpa",
    EAGER_CAUSAL: "eager",
    FLASH: "flash_attention_2",
    FLASH_VARLEN: "flash_attention_2",
}


def attention_kernel(
    requested: str,
    *,
    on_gpu: bool,
    flex_available: bool,
    has_query_blocks: bool,
    packed: bool,
    padded: bool,
) -> str:
    """The kernel that serves a batch (one of the labels above).

    ``flex_attention`` uses a BlockMask on a GPU with FlexAttention, else the same mask
    densely through SDPA. ``sdpa``/``eager`` use the dense mask when the batch needs more
    than causal + padding (query blocks, packed rows), else transformers' causal mask.
    ``flash_attention_2`` serves every batch without query blocks (variable-length when
    padded or packed); one with query blocks falls back to SDPA with the dense mask, with a
    one-time warning -- never an error.

    Raises:
        ValueError: an unknown ``requested`` implementation.
    """
    if requested not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"llm.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {requested!r}")
    needs_mask = has_query_blocks or packed
    if requested == "flex_attention":
        if on_gpu and flex_available:
            return FLEX
        _log_once(
            logging.INFO,
            "flex_attention needs a GPU with torch FlexAttention; running the same mask_mod as a dense "
            "SDPA mask here (identical results, no block skipping)",
        )
        requested = "sdpa"
    if requested == "flash_attention_2":
        if not has_query_blocks:
            return FLASH_VARLEN if packed or padded else FLASH
        _log_once(
            logging.WARNING,
            "flash_attention_2 cannot take the bidirectional query-block mask: batches with generation "
            "queries run through SDPA with the dense mask (llm.attn_implementation=flex_attention serves them "
            "with a block mask)",
        )
        return SDPA_DENSE
    if requested == "eager":
        return EAGER_DENSE if needs_mask else EAGER_CAUSAL
    return SDPA_DENSE if needs_mask else SDPA_CAUSAL


@cache
def _log_once(level: int, message: str) -> None:
    logger.log(level, message)
