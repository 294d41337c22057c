"""The layout of what the VidTok tokenizer hands the LLM, and back (docs/vidtok.md, "The
LLM over VidTok features").

A latent grid ``(B, C, T', h, w)`` -- normalised KL latents, or FSQ code digits -- is cut
into p x p patches: tokens run time-major, then patch rows, then patch columns; inside a
token the features are ``(C, p, p)`` flattened (channel-major, then row, then column).
FSQ digits are the base-L digits of VidTok's code index, channel 0 least significant.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange


def patchify(grid_bcthw: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, T', h, w)`` -> ``(B, T' (h/p) (w/p), C p p)`` tokens."""
    return rearrange(grid_bcthw, "b c t (h p1) (w p2) -> b (t h w) (c p1 p2)", p1=patch, p2=patch)


def unpatchify(feats_bnd: torch.Tensor, grid_thw: tuple[int, int, int], patch: int) -> torch.Tensor:
    """The inverse of ``patchify``: ``(B, N, C p p)`` -> ``(B, C, T', h, w)``, given the token
    grid ``(T', h/p, w/p)``."""
    t, h, w = grid_thw
    if feats_bnd.ndim != 3 or feats_bnd.shape[1] != t * h * w or feats_bnd.shape[2] % (patch * patch):
        raise ValueError(
            f"expected (B, N={t * h * w}, C*{patch}*{patch}) features, got shape {tuple(feats_bnd.shape)}"
        )
    return rearrange(
        feats_bnd, "b (t h w) (c p1 p2) -> b c t (h p1) (w p2)", t=t, h=h, w=w, p1=patch, p2=patch
    )


def _place_values(levels: list[int], device: torch.device) -> torch.Tensor:
    """``(k,)`` the weight of each digit in the index: 1, L_0, L_0 L_1, ..."""
    return torch.tensor([math.prod(levels[:c]) for c in range(len(levels))], dtype=torch.long, device=device)


def index_digits(indices_bthw: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """``(B, T', h, w)`` FSQ indices -> ``(B, k, T', h, w)`` int64 digits, digit c in [0, L_c)."""
    place_k = _place_values(levels, indices_bthw.device)
    levels_k = torch.tensor(levels, dtype=torch.long, device=indices_bthw.device)
    shape = (1, len(levels), 1, 1, 1)
    return (indices_bthw.long().unsqueeze(1) // place_k.view(shape)) % levels_k.view(shape)


def digits_index(digits_bkthw: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """``(B, k, T', h, w)`` digits (any floats: generated ones may be off the grid; rounded
    and clamped to [0, L_c) first) -> ``(B, T', h, w)`` int64 FSQ indices."""
    shape = (1, len(levels), 1, 1, 1)
    top_k = torch.tensor([level - 1 for level in levels], device=digits_bkthw.device).view(shape)
    digits = digits_bkthw.float().nan_to_num(0.0).round().clamp(min=0).minimum(top_k).long()
    place_k = _place_values(levels, digits_bkthw.device)
    return (digits * place_k.view(shape)).sum(dim=1)
