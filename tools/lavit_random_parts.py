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

    video = args.out / LAVIT_VIDEO_DETOKENIZER_DIR
    if args.motion_detokenizer and not video.is_dir():
        seed_everything(args.seed)
        config = compose_config([f"motion_detokenizer={args.motion_detokenizer}"]).motion_detokenizer
        build_motion_detokenizer(config).save_pretrained(video)
        print(f"video de-tokenizer ({args.motion_detokenizer}, random, seed {args.seed}) -> {video}")

    motion = args.out / LAVIT_MOTION_TOKENIZER_DIR
    if args.motion_tokenizer and not motion.is_dir():
        seed_everything(args.seed)
        config = compose_config([f"motion_tokenizer={args.motion_tokenizer}"]).motion_tokenizer
        build_motion_tokenizer(config).save_pretrained(motion)
        print(f"motion tokenizer ({args.motion_tokenizer}, random, seed {args.seed}) -> {motion}")

    visual = args.out / LAVIT_VISUAL_TOKENIZER_DIR
    if visual.is_dir():
        tokenizer = load_keyframe_tokenizer(visual)
        print(f"{visual} already there")
    else:
        seed_everything(args.seed)
        config = compose_config([f"keyframe_tokenizer={args.keyframe_tokenizer}"]).keyframe_tokenizer
        tokenizer = build_keyframe_tokenizer(config)
        tokenizer.save_pretrained(visual)
        print(f"keyframe tokenizer ({args.keyframe_tokenizer}, random, seed {args.seed}) -> {visual}")
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
