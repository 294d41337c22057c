"""Finite scalar codes as digits: a code of k channels with ``L_c`` values each is the
mixed-radix number of its digits, digit 0 least significant (VidTok's FSQ index). What a
discrete tokenizer hands the LLM (``VideoTokenizer.feature_levels``) and what the LLM's
code heads score and sample are these digits; both sides convert with these functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def place_values(levels: Sequence[int], device: torch.device | None = None) -> torch.Tensor:
    """``(k,)`` int64: the weight of each digit in the index, ``[1, L_0, L_0 L_1, ...]``."""
    return torch.tensor([math.prod(levels[:c]) for c in range(len(levels))], dtype=torch.long, device=device)


def digit_ids(digits: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """``(..., k)`` digits as any floats -> int64, rounded and clamped to ``[0, L_c)`` (NaN
    -> 0): generated digits may come back off the grid after a cast, and a digit outside its
    level would silently name another code."""
    high = torch.tensor([level - 1 for level in levels], dtype=torch.long, device=digits.device)
    return digits.float().nan_to_num(0.0).round().long().clamp(min=0).minimum(high)


def digits_to_index(digits: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """``(..., k)`` digits (``digit_ids`` first) -> ``(...)`` int64 code indices."""
    return (digit_ids(digits, levels) * place_values(levels, digits.device)).sum(dim=-1)


def index_to_digits(index: torch.Tensor, levels: Sequence[int]) -> torch.Tensor:
    """``(...)`` code indices -> ``(..., k)`` int64 digits, digit c in ``[0, L_c)``."""
    size = torch.tensor(list(levels), dtype=torch.long, device=index.device)
    return index.long().unsqueeze(-1) // place_values(levels, index.device) % size
