"""Precompute video-tokenizer features for a config's data (the feature cache).

    divot-data features --out data/cache/demo -- experiment=demo data.root=data/synthetic

Runs the frozen video tokenizer once over every train and validation sample (the clips
the loader samples in epoch 0) and writes one safetensors file per sample, in the encode
dtype (bf16 on a GPU). Train with ``data.feature_cache=<out>`` to skip decoding and the
tokenizer (the run then builds no ViT). Re-running resumes. On N GPUs, run N commands
with ``--shard I/N --device cuda:I`` into the same ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import torch
from tqdm import tqdm

from divot_llm.config import compose_config
from divot_llm.data.cache_build import build_feature_cache
from divot_llm.data.feature_cache import expected_info
from divot_llm.runtime import default_dtype, seed_everything
from divot_llm.tokenizers import build_video_tokenizer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="cache folder")
    add_encoding_arguments(parser)
    add_shard_argument(parser)
    parser.add_argument("overrides", nargs="*", help="config overrides, after --, e.g. experiment=demo")


def add_shard_argument(parser: argparse.ArgumentParser) -> None:
    """``--shard I/N`` of the recipes that fill a cache."""
    parser.add_argument(
        "--shard",
        type=_shard,
        default=(0, 1),
        metavar="I/N",
        help="build only the I-th of N shares of every source (0-based): run N at once, one per GPU "
        "(--device cuda:I), into the same --out (default 0/1: everything)",
    )


def add_encoding_arguments(parser: argparse.ArgumentParser) -> None:
    """``--batch-clips``, ``--workers``, ``--device`` and ``--dtype`` of the recipes that run
    the video tokenizer over a dataset's clips."""
    parser.add_argument("--batch-clips", type=int, default=32, help="clips per tokenizer forward")
    parser.add_argument(
        "--workers",
        type=int,
        default=min(8, (os.cpu_count() or 1) - 1),
        help="processes decoding videos while this one encodes (default: cores - 1, at most 8; "
        "0 decodes in this process)",
    )
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 on GPU, fp32 on CPU (as training)",
    )


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """What ``--device`` / ``--dtype`` ask for."""
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    return device, {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype) or default_dtype(device)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, e.g. 3/8; got {text!r}")
    return int(index), int(count)


def run(args: argparse.Namespace) -> int:
    cfg = compose_config(args.overrides)
    device, dtype = device_and_dtype(args)
    # Seeded as the trainer builds it (build_models): a random-init tokenizer (tiny configs)
    # must be the very one the run will use, or the cache's fingerprint will not match it.
    seed_everything(cfg.train.seed)
    tokenizer = build_video_tokenizer(cfg.video_tokenizer).to(device, dtype)
    tokenizer_cfg = dataclasses.asdict(cfg.video_tokenizer)
    info = expected_info(tokenizer, tokenizer_cfg, cfg.data)
    with tqdm(desc="features", unit="sample") as bar:
        counts = build_feature_cache(
            cfg.data,
            tokenizer,
            info,
            args.out,
            batch_clips=args.batch_clips,
            progress=bar.update,
            workers=args.workers,
            shard=args.shard,
        )
    print(f"feature cache {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"train with: data.feature_cache={args.out}")
    return 0
