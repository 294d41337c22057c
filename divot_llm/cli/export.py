"""``divot-export``: convert training checkpoints for use outside DeepSpeed.

    divot-export zero-to-fp32 outputs/pretrain outputs/pretrain-fp32
    divot-export zero-to-fp32 outputs/pretrain/checkpoints/step_00002000 out/ --max-shard-size 2GB
    divot-export detokenizer outputs/detok_demo releases/detok_demo      # de-tokenizer stages
    divot-export detokenizer outputs/t2v_tiny releases/t2v_tiny --raw   # not the EMA weights
    divot-export vidtok outputs/vidtok_tiny releases/vidtok_tiny         # stage=vidtok
    divot-export motion-tokenizer outputs/motion_tokenizer_tiny releases/motion_tokenizer_tiny
    divot-export motion-detokenizer outputs/lavit_detok_tiny releases/lavit_detok_tiny/video_detokenizer

CKPT may be a run folder, its checkpoints/ folder, one checkpoints/step_* folder or any
DeepSpeed checkpoint folder with a 'latest' tag file. Half-written checkpoints are
refused. The output (safetensors shards, the run's config.yaml, export.json) is what
``divot-merge --checkpoint`` takes. Exit codes: 0 written, 1 no usable checkpoint or the
output exists, 2 a bad argument (a missing path, a release given as CKPT).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from divot_llm.layout import EXPORT_INFO


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="divot-export", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    zero = commands.add_parser(
        "zero-to-fp32",
        help="consolidate a ZeRO-2/3 checkpoint into fp32 safetensors (DeepSpeed's converter, streamed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    zero.add_argument(
        "checkpoint", metavar="CKPT", help="run folder, checkpoints/ folder or checkpoints/step_* folder"
    )
    zero.add_argument("out", metavar="OUT", help="output folder")
    zero.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    zero.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    detok = commands.add_parser(
        "detokenizer",
        help="a de-tokenizer stage's checkpoint (detok, tokenizer, detok_adapt) -> save_pretrained folders",
    )
    detok.add_argument(
        "checkpoint", metavar="CKPT", help="run folder, checkpoints/ folder or checkpoints/step_* folder"
    )
    detok.add_argument(
        "out",
        metavar="OUT",
        help="output folder: gets detokenizer/ (+ video_tokenizer/ for stage=tokenizer, config.yaml for stage=t2v)",
    )
    detok.add_argument(
        "--raw",
        action="store_true",
        help="the trained weights, not their EMA (exported by default when the run kept one: stage.ema)",
    )
    vidtok = commands.add_parser(
        "vidtok",
        help="a stage=vidtok checkpoint -> OUT/video_tokenizer/ (save_pretrained) and OUT/vidtok.ckpt (VidTok's form)",
    )
    vidtok.add_argument(
        "checkpoint", metavar="CKPT", help="run folder, checkpoints/ folder or checkpoints/step_* folder"
    )
    vidtok.add_argument("out", metavar="OUT", help="output folder")
    motion = commands.add_parser(
        "motion-tokenizer",
        help="a stage=motion_tokenizer checkpoint -> OUT, the motion tokenizer's save_pretrained folder",
    )
    motion.add_argument(
        "checkpoint", metavar="CKPT", help="run folder, checkpoints/ folder or checkpoints/step_* folder"
    )
    motion.add_argument("out", metavar="OUT", help="output folder")
    motion_detok = commands.add_parser(
        "motion-detokenizer",
        help="a stage=lavit_detok checkpoint -> OUT, the video de-tokenizer in the release's "
        "video_detokenizer/ layout ({vae,scheduler,unet}) + our config",
    )
    motion_detok.add_argument(
        "checkpoint", metavar="CKPT", help="run folder, checkpoints/ folder or checkpoints/step_* folder"
    )
    motion_detok.add_argument("out", metavar="OUT", help="output folder")
    args = parser.parse_args(argv)
    from divot_llm.config.paths import PathError, check_path
    from divot_llm.config.schema import PathKind

    try:
        check_path(args.checkpoint, PathKind.checkpoint, "CKPT")
    except PathError as exc:
        print(f"divot-export: {exc}", file=sys.stderr)
        return 2
    if args.command == "detokenizer":
        return _export_detokenizer(args)
    if args.command == "vidtok":
        return _export_vidtok(args)
    if args.command == "motion-tokenizer":
        return _export_motion_tokenizer(args)
    if args.command == "motion-detokenizer":
        return _export_motion_detokenizer(args)

    from divot_llm.export import CheckpointError, zero_to_fp32

    try:
        out = zero_to_fp32(args.checkpoint, args.out, args.max_shard_size, overwrite=args.overwrite)
    except (CheckpointError, FileExistsError) as exc:
        print(f"divot-export: {exc}", file=sys.stderr)
        return 1
    info = json.loads((out / EXPORT_INFO).read_text())
    files = sorted(p.name for p in Path(out).iterdir())
    print(
        f"fp32 weights of {info['source']} (ZeRO-{info['zero_stage']}, {info['world_size']} ranks, "
        f"step {info['step']}) -> {out}: {', '.join(files)}"
    )
    return 0


def _export_detokenizer(args) -> int:
    from divot_llm.export.detokenizer import detok_checkpoint_to_pretrained

    return _write_folder(lambda: detok_checkpoint_to_pretrained(args.checkpoint, args.out, raw=args.raw))


def _export_vidtok(args) -> int:
    from divot_llm.export.vidtok import vidtok_checkpoint_to_pretrained

    return _write_folder(lambda: vidtok_checkpoint_to_pretrained(args.checkpoint, args.out))


def _export_motion_tokenizer(args) -> int:
    from divot_llm.export.motion_tokenizer import motion_tokenizer_checkpoint_to_pretrained

    return _write_folder(lambda: motion_tokenizer_checkpoint_to_pretrained(args.checkpoint, args.out))


def _export_motion_detokenizer(args) -> int:
    from divot_llm.export.motion_detokenizer import motion_detokenizer_checkpoint_to_pretrained

    return _write_folder(lambda: motion_detokenizer_checkpoint_to_pretrained(args.checkpoint, args.out))


def _write_folder(export: Callable[[], Path]) -> int:
    """Run one checkpoint export and name the files it wrote; a checkpoint it refuses is one line."""
    from divot_llm.export import CheckpointError

    try:
        out = export()
    except (CheckpointError, ValueError) as exc:
        print(f"divot-export: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(str(p) for p in sorted(Path(out).iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
