"""Per-channel latent statistics of a continuous VidTok over a config's training clips.

    divot-data latent-stats --out data/vidtok_stats -- video_tokenizer=vidtok_tiny video_tokenizer.frames_per_clip=9 data.frames_per_window=32 data.root=data/synthetic

Runs the configured KL VidTok over the clips the LLM stages sample (train split, epoch 0),
and writes OUT/video_tokenizer/ (the tokenizer, save_pretrained, its latent_mean and
latent_std in tokenizer_config.json) and OUT/latent_stats.json. Use it with
``video_tokenizer.pretrained_path=OUT/video_tokenizer``: ``encode`` then hands the LLM
(latent - mean) / std. Bad samples are skipped and counted.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

from tqdm import tqdm

from data_recipes.features import add_encoding_arguments, device_and_dtype
from divot_llm.config import compose_config
from divot_llm.data.latent_stats import latent_stats
from divot_llm.runtime import seed_everything
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.tokenizers.vidtok import VidTokConfig, VidTokTokenizer

STATS_FILE = "latent_stats.json"
TOKENIZER_DIR = "video_tokenizer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--max-clips", type=int, default=None, help="stop after this many clips (default: every train sample)"
    )
    add_encoding_arguments(parser)
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, after --, e.g. video_tokenizer=vidtok_tiny"
    )


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides)
    device, dtype = device_and_dtype(args)
    # Seeded as the trainer builds it: a random-init tokenizer (tiny configs) is the one a run uses
    if not isinstance(cfg.video_tokenizer, VidTokConfig) or cfg.video_tokenizer.regularizer != "kl":
        print(
            f"error: video_tokenizer {cfg.video_tokenizer.name} is not a continuous (KL) VidTok: "
            "only its latents are normalised"
        )
        return 2
    seed_everything(cfg.train.seed)
    tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    assert isinstance(tokenizer, VidTokTokenizer)  # what a VidTokConfig builds
    # encoded in the run's dtype; the folder keeps the weights as loaded (a bf16 copy would change them)
    encoder = copy.deepcopy(tokenizer).to(device, dtype)
    with tqdm(desc="latent-stats", unit="clip", total=args.max_clips) as bar:
        stats, counts = latent_stats(
            cfg.data,
            encoder,
            max_clips=args.max_clips,
            batch_clips=args.batch_clips,
            progress=bar.update,
            workers=args.workers,
        )
    tokenizer.set_latent_stats(stats.mean, stats.std)
    folder = args.out / TOKENIZER_DIR
    tokenizer.save_pretrained(folder)
    record = {"tokenizer": tokenizer.config.name, **dataclasses.asdict(stats), "counts": dict(counts)}
    (args.out / STATS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"latent statistics over {stats.clips} clips: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    print(f"mean {[round(v, 4) for v in stats.mean]}, std {[round(v, 4) for v in stats.std]}")
    print(f"use them with: video_tokenizer.pretrained_path={folder}")
    return 0
