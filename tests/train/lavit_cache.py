"""A LaVIT tokens cache of the training tests' synthetic set: every clip's motion codes from
the tiny motion tokenizer (random, seeded as a run builds it) and its keyframe's codes from
a stand-in for the keyframe tokenizer (``colour_codes``), through the real cache builder
and the keyframe extraction it does (``divot-data motion-cache --tokens``' path)."""

from __future__ import annotations

from pathlib import Path

import torch

from divot_llm.config import compose_config
from divot_llm.data.motion_cache import MotionCacheInfo
from divot_llm.data.motion_cache_build import build_motion_cache
from divot_llm.runtime import seed_everything
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer

KEYFRAME_SIZE = 32
# The tests' share of each experiment's sources (each source is a cache group of its own,
# its videos re-encoded once per group): the generation source of SFT and the held-out
# generation source of pretraining are left out.
TRIMMED = {
    "lavit_pretrain_tiny": ("~data.val_sources.video_gen",),
    "lavit_sft_tiny": ("~data.sources.video_gen",),
}
GRID = 4  # keyframe patches per side


def colour_codes(images_b3ss: torch.Tensor) -> list[torch.Tensor]:
    """A keyframe tokenizer's ``encode`` in miniature: each of the 4 x 4 patches' mean
    colour at 4 levels per channel (64 codes), the background's (the commonest) dropped --
    a variable number of codes per image that names the shape's colour."""
    b, _, s, _ = images_b3ss.shape
    means = images_b3ss.float().view(b, 3, GRID, s // GRID, GRID, s // GRID).mean((3, 5))
    levels = (means / 64).long().clamp(max=3)
    codes_bp = (levels[:, 0] * 16 + levels[:, 1] * 4 + levels[:, 2]).flatten(1)
    kept = [row[row != row.mode().values] for row in codes_bp]
    return [k if k.numel() else row[:1] for k, row in zip(kept, codes_bp, strict=True)]


def build_lavit_cache(data_root: Path, out: Path) -> Path:
    """One cache folder for both tiny experiments' (trimmed) data configs: their sources
    differ, their extraction settings do not."""
    for experiment, trimmed in TRIMMED.items():
        cfg = compose_config(
            [f"experiment={experiment}", f"data.root={data_root}", "data.num_workers=0", *trimmed]
        )
        seed_everything(cfg.train.seed)
        tokenizer = build_motion_tokenizer(cfg.motion_tokenizer).eval()
        info = MotionCacheInfo.of(
            cfg.data.motion, "lavit_motion_tiny", "tiny-motion", "colour_codes", "colours"
        )
        with torch.no_grad():
            build_motion_cache(cfg.data, info, out, tokenizer.encode, keyframes=colour_codes,
                               keyframe_size=KEYFRAME_SIZE)  # fmt: skip
    return out
