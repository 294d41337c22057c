"""Run every ``divot-infer lavit`` mode on a release root in one process: the same command
lines as typed (each printed first), without five interpreter start-ups (launch/lavit_tiny.sh's
last step; each mode's outputs go to OUT/<mode>/, comprehend's answers to OUT/answers.txt).

    python tools/lavit_modes.py --release outputs/lavit_tiny/release --out outputs/lavit_tiny/infer \\
        --captions "a red circle moving left" "a blue square moving up" \\
        --videos clip0.mp4 clip1.mp4 --image keyframe.jpg --steps 2
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from pathlib import Path

from divot_llm.cli.infer import main as infer_main


def mode_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """Each mode's ``divot-infer`` arguments."""
    common = ["--release", args.release, "--seed", str(args.seed)]
    generate = [*common, "--steps", str(args.steps), "--keyframe-steps", str(args.steps)]
    out = Path(args.out)
    return {
        "t2v": ["lavit", "t2v", *generate, *args.captions, "--out", str(out / "t2v")],
        "reconstruct": [
            "lavit",
            "reconstruct",
            *common,
            "--steps",
            str(args.steps),
            "--max-clips",
            "1",
            *args.videos,
            "--out",
            str(out / "reconstruct"),
        ],  # fmt: skip
        "i2v": [
            "lavit",
            "i2v",
            *generate,
            args.image,
            "--prompt",
            args.captions[0],
            "--out",
            str(out / "i2v"),
        ],
        "long": ["lavit", "long", *generate, *args.captions, "--out", str(out / "long")],
        "comprehend": ["lavit", "comprehend", *common, "--max-clips", "2", *args.videos, "-q", args.question],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--release", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--captions", nargs="+", required=True, help="t2v and long (one segment each); i2v's prompt"
    )
    parser.add_argument("--videos", nargs="+", required=True, help="reconstruct and comprehend")
    parser.add_argument("--image", required=True, help="i2v's keyframe")
    parser.add_argument("--question", default="What color is the shape in the video?")
    parser.add_argument("--steps", type=int, default=25, help="de-tokenizer sampler steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for mode, command in mode_commands(args).items():
        print(f"$ divot-infer {shlex.join(command)}", flush=True)
        target = open(out / "answers.txt", "w") if mode == "comprehend" else contextlib.nullcontext()
        with target as answers, contextlib.redirect_stdout(answers or sys.stdout):
            code = infer_main(command)
        if code != 0:
            print(f"divot-infer lavit {mode} failed (exit {code})", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
