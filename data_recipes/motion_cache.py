"""Precompute Video-LaVIT motion fields, or motion tokens, for a config's data (the motion cache).

    divot-data motion-cache --out data/cache/motion -- data=synthetic_motion data.root=data/synthetic data.motion.gop=6 data.motion.height=10 data.motion.width=18

Re-encodes every train and validation video as the motion loader does (data.motion) and
writes every clip's motion field, in fp16, one safetensors file per sample. With --tokens
the config's motion tokenizer (motion_tokenizer=...) encodes the clips and the cache holds
their codes instead. Train with data.motion_cache=<out>; a run whose data.motion (or motion
tokenizer) differs refuses the cache. With --tokens and a keyframe tokenizer
(keyframe_tokenizer=...) every clip's keyframe (its first frame in the re-encoded stream,
resized to the tokenizer's input) is encoded too and every image gets its keyframe codes:
the tokens cache Video-LaVIT's LLM trains on (stage=lavit_pretrain | lavit_sft). Re-running resumes. With several processes or GPUs,
run N commands with --shard I/N (and --device cuda:I) into the same --out, or run it under
a launcher (torchrun, deepspeed): each rank builds its own share on its own GPU (no index:
a build without --shard afterwards checks that every source had a usable sample).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from tqdm import tqdm

from data_recipes.features import add_encoding_arguments, add_shard_argument, device_and_dtype
from data_recipes.ranks import Launch
from divot_llm.config import compose_config
from divot_llm.config.schema import DivotConfig
from divot_llm.data.motion_cache import MotionCacheInfo, motion_tokenizer_fingerprint
from divot_llm.data.motion_cache_build import Encode, EncodeKeyframes, build_motion_cache
from divot_llm.runtime import seed_everything
from divot_llm.tokenizers.motion.registry import MOTION_TOKENIZERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="cache folder")
    parser.add_argument(
        "--tokens",
        action="store_true",
        help="store the codes of the config's motion tokenizer (motion_tokenizer=...) instead of the fields",
    )
    add_encoding_arguments(parser)  # --batch-clips, --device and --dtype only matter with --tokens
    add_shard_argument(parser)
    parser.add_argument("overrides", nargs="*", help="config overrides, after --, e.g. data=synthetic_motion")


def tokens_encoder(cfg: DivotConfig, args: argparse.Namespace) -> tuple[MotionCacheInfo, Encode]:
    """The config's motion tokenizer as the cache's encoder, and the info naming it.

    Raises:
        ValueError: no motion tokenizer configured, or one for other fields than data.motion.
    """
    if cfg.motion_tokenizer is None:
        raise ValueError("--tokens needs a motion tokenizer: add motion_tokenizer=<option> (e.g. lavit)")
    cls, config = MOTION_TOKENIZERS.resolve(cfg.motion_tokenizer)
    motion = cfg.data.motion
    if (config.frames, config.height, config.width) != (motion.clip_frames, motion.height, motion.width):
        raise ValueError(
            f"motion tokenizer {config.name} takes {config.frames} x {config.height} x {config.width} fields, "
            f"data.motion gives {motion.clip_frames} x {motion.height} x {motion.width} (2 * gop x height x width)"
        )
    device, dtype = device_and_dtype(args)
    # seeded as a run builds it: a random-init tokenizer (tiny configs) is then the run's own
    seed_everything(cfg.train.seed)
    tokenizer = cls.from_config(config).to(device, dtype).eval()
    fingerprint = motion_tokenizer_fingerprint(tokenizer, dataclasses.asdict(config))

    def encode(fields_b2fhw: torch.Tensor) -> torch.Tensor:
        return tokenizer.encode(fields_b2fhw.to(device, dtype))

    return MotionCacheInfo.of(motion, config.name, fingerprint), encode


def keyframe_encoder(cfg: DivotConfig, args: argparse.Namespace) -> tuple[str, str, int, EncodeKeyframes]:
    """The config's keyframe tokenizer as the cache's keyframe encoder: (its name, its
    fingerprint, its input size, encode)."""
    from divot_llm.tokenizers.keyframe.registry import KEYFRAME_TOKENIZERS, build_keyframe_tokenizer

    _, config = KEYFRAME_TOKENIZERS.resolve(cfg.keyframe_tokenizer)
    device, dtype = device_and_dtype(args)
    seed_everything(cfg.train.seed)  # a random-init tokenizer (tiny configs) is then reproducible
    tokenizer = build_keyframe_tokenizer(cfg.keyframe_tokenizer).to(device, dtype).eval()
    fingerprint = motion_tokenizer_fingerprint(tokenizer, dataclasses.asdict(config))

    # the token predictor's keep decisions are drawn: from one generator seeded by
    # train.seed, so a build (same data, shard and batching) gives the same codes again
    generator = torch.Generator(device).manual_seed(cfg.train.seed)

    def encode(images_b3ss: torch.Tensor) -> list[torch.Tensor]:
        return tokenizer.encode(images_b3ss.to(device), generator)

    return config.name, fingerprint, tokenizer.input_size, encode


def run(args: argparse.Namespace) -> int:
    launch = Launch.from_env()
    try:
        shard = launch.shard(args.shard)  # under a launcher: the rank's share
    except ValueError as exc:
        return launch.refuse("divot-data motion-cache", str(exc))
    cfg = compose_config(args.overrides)
    keyframes, keyframe_size = None, 224
    if args.tokens:
        try:
            info, encode = tokens_encoder(cfg, args)
        except ValueError as exc:
            print(f"error: {exc}")
            return 2
        if cfg.keyframe_tokenizer is not None:
            name, fingerprint, keyframe_size, keyframes = keyframe_encoder(cfg, args)
            info = dataclasses.replace(info, keyframe_tokenizer=name, keyframe_fingerprint=fingerprint)
    else:
        info, encode = MotionCacheInfo.of(cfg.data.motion), None
    with tqdm(desc="motion", unit="video") as bar:
        counts = build_motion_cache(cfg.data, info, args.out, encode, workers=args.workers, shard=shard,
                                    batch_clips=args.batch_clips, progress=bar.update, keyframes=keyframes,
                                    keyframe_size=keyframe_size)  # fmt: skip
    print(f"motion cache {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    read = sum(counts.values()) - counts["already_cached"]  # the samples this run looked at
    skipped = read - counts["written"]
    print(f"skipped {skipped} of the {read} samples read ({skipped / max(1, read):.0%}); the reasons above")
    print(f"train with: data.motion_cache={args.out}")
    return 0
