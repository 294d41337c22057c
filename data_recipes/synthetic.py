"""Write the synthetic video/image dataset (moving coloured shapes, captions, QA).

Real encoded media (h264/mpeg4 mp4, vp9 webm, gif; jpg/png), packed as webdataset tar
shards and jsonl files in the formats the training pipeline reads. Deterministic by seed.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from tqdm import tqdm

from divot_llm.data.synthetic import SyntheticCounts, total_samples, write_synthetic_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SyntheticCounts()
    parser.add_argument("--out", type=Path, required=True, help="output folder (e.g. data/synthetic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-videos", type=int, default=defaults.train_videos)
    parser.add_argument("--val-videos", type=int, default=defaults.val_videos)
    parser.add_argument("--images", type=int, default=defaults.images)
    parser.add_argument("--samples-per-shard", type=int, default=defaults.samples_per_shard)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that render and encode the media (default: all cores); same files for any number",
    )


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        if not args.overwrite:
            print(f"error: {out} is not empty; pass --overwrite to replace it")
            return 2
        shutil.rmtree(out)
    counts = SyntheticCounts(
        train_videos=args.train_videos,
        val_videos=args.val_videos,
        images=args.images,
        samples_per_shard=args.samples_per_shard,
    )
    with tqdm(total=total_samples(counts), desc="synthetic", unit="sample") as bar:
        manifest = write_synthetic_dataset(
            out, seed=args.seed, counts=counts, progress=bar.update, workers=max(1, args.workers)
        )
    codecs = ", ".join(f"{k} {v}" for k, v in sorted(manifest["codecs"].items()))
    print(
        f"wrote {manifest['train_videos']} train + {manifest['val_videos']} val videos ({codecs}) "
        f"and {manifest['images']} images to {out.resolve()}"
    )
    return 0
