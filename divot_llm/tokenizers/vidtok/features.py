"""The layout of what the VidTok tokenizer hands the LLM, and back (docs/vidtok.md, "The
LLM over VidTok features").

A latent grid ``(B, C, T', h, w)`` -- normalised KL latents, or FSQ code digits -- is cut
into p x p patches: tokens run time-major, then patch rows, then patch columns; inside a
token the features are ``(C, p, p)`` flattened (channel-major, then row, then column).
FSQ digits are the base-L digits of VidTok's code index, channel 0 least significant.
"""

from __future__ import annotations

import torch
from einops import rearrange

from divot_llm.tokenizers.codes import digits_to_index, index_to_digits


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


def index_digits(indices_bthw: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """``(B, T', h, w)`` FSQ indices -> ``(B, k, T', h, w)`` int64 digits, digit c in [0, L_c)."""
    return index_to_digits(indices_bthw, levels).movedim(-1, 1)


def digits_index(digits_bkthw: torch.Tensor, levels: list[int]) -> torch.Tensor:
    """``(B, k, T', h, w)`` digits (any floats: generated ones may be off the grid; rounded
    and clamped to [0, L_c) first) -> ``(B, T', h, w)`` int64 FSQ indices."""
    return digits_to_index(digits_bkthw.movedim(1, -1), levels)
