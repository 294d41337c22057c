"""Write the Video-LaVIT parts that have no training stage here, randomly initialised at
test size, into a release root (the layout of ``divot_llm.layout``): the keyframe tokenizer
(``keyframe_tokenizer=lavit_tiny``, its weights drawn from --seed) in ``visual_tokenizer/``
and the SDXL-style keyframe image de-tokenizer, conditioned on that tokenizer's decoder
embeddings, in ``image_detokenizer/``; with --motion-tokenizer / --motion-detokenizer also
an untrained motion tokenizer in ``motion_tokenizer/`` / video de-tokenizer in
``video_detokenizer/`` (launch/lavit_tiny.sh with LAVIT_MOTION_STEPS=0 / LAVIT_DETOK_STEPS=0).
launch/lavit_tiny.sh uses it; parts already there are kept.

    python tools/lavit_random_parts.py --out outputs/lavit_tiny/release --seed 0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from divot_llm.config import compose_config
from divot_llm.detokenizers.motion.image import LaVITImageDetokenizer
from divot_llm.detokenizers.motion.registry import build_motion_detokenizer
from divot_llm.layout import (
    LAVIT_IMAGE_DETOKENIZER_DIR,
    LAVIT_MOTION_TOKENIZER_DIR,
    LAVIT_VIDEO_DETOKENIZER_DIR,
    LAVIT_VISUAL_TOKENIZER_DIR,
)
from divot_llm.runtime import seed_everything
from divot_llm.tokenizers.keyframe.registry import build_keyframe_tokenizer, load_keyframe_tokenizer
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer


def random_component(folder: Path, group: str, option: str, build, seed: int, load=None):
    """``folder``'s component, or a random one of ``group=option`` drawn from ``seed`` and
    saved there; returns it when ``load`` reads a saved one back (else None if it was there)."""
    if folder.is_dir():
        print(f"{folder} already there")
        return load(folder) if load is not None else None
    seed_everything(seed)
    component = build(getattr(compose_config([f"{group}={option}"]), group))
    component.save_pretrained(folder)
    print(f"{group} ({option}, random, seed {seed}) -> {folder}")
    return component


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="the release root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keyframe-tokenizer", default="lavit_tiny", help="conf/keyframe_tokenizer option")
    parser.add_argument("--motion-tokenizer", help="also a random one of this conf/motion_tokenizer option")
    parser.add_argument(
        "--motion-detokenizer", help="also a random one of this conf/motion_detokenizer option"
    )
    args = parser.parse_args(argv)

    if args.motion_detokenizer:
        random_component(args.out / LAVIT_VIDEO_DETOKENIZER_DIR, "motion_detokenizer", args.motion_detokenizer,
                         build_motion_detokenizer, args.seed)  # fmt: skip
    if args.motion_tokenizer:
        random_component(args.out / LAVIT_MOTION_TOKENIZER_DIR, "motion_tokenizer", args.motion_tokenizer,
                         build_motion_tokenizer, args.seed)  # fmt: skip
    tokenizer = random_component(args.out / LAVIT_VISUAL_TOKENIZER_DIR, "keyframe_tokenizer",
                                 args.keyframe_tokenizer, build_keyframe_tokenizer, args.seed,
                                 load=load_keyframe_tokenizer)  # fmt: skip
    image = args.out / LAVIT_IMAGE_DETOKENIZER_DIR
    if image.is_dir():
        print(f"{image} already there")
    else:
        detok = LaVITImageDetokenizer.random(tokenizer.embed_dim, tokenizer.pooled_dim, seed=args.seed)
        detok.save_pretrained(image)
        print(f"image de-tokenizer (tiny, random, seed {args.seed}) -> {image}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
