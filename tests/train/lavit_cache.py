"""A LaVIT tokens cache of the training tests' synthetic set, built by the command a user
runs (``divot-data motion-cache --tokens`` with motion_tokenizer=lavit_tiny and
keyframe_tokenizer=lavit_tiny, both random and seeded as a run builds them): every clip's
motion codes and its keyframe's codes, every image's keyframe codes."""

from __future__ import annotations

from pathlib import Path

from data_recipes.__main__ import main as data_main

# The tests' share of each experiment's sources (each source is a cache group of its own,
# its videos re-encoded once per group): the generation source of SFT and the held-out
# generation source of pretraining are left out.
TRIMMED = {
    "lavit_pretrain_tiny": ("~data.val_sources.video_gen",),
    "lavit_sft_tiny": ("~data.sources.video_gen",),
}


def build_lavit_cache(data_root: Path, out: Path) -> Path:
    """One cache folder for both tiny experiments' (trimmed) data configs: their sources
    differ, their extraction settings and tokenizers do not."""
    for experiment, trimmed in TRIMMED.items():
        overrides = [
            f"experiment={experiment}",
            "keyframe_tokenizer=lavit_tiny",
            f"data.root={data_root}",
            *trimmed,
        ]
        assert (
            data_main(["motion-cache", "--tokens", "--out", str(out), "--workers", "0", "--", *overrides])
            == 0
        )
    return out
