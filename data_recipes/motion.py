"""Extract a video's Video-LaVIT motion fields and draw them.

    divot-data motion clip.mp4 --png motion.png
    divot-data motion clip.mp4 --png motion.png --clip 1 --set data.motion.gop=6

Re-encodes the video as ``data.motion`` says (MPEG-4 Part 2, 6 fps, GOP 12 by default;
change it with --set KEY=VALUE config overrides), reads the motion vectors with PyAV and prints
the clips found: each clip's first frame and time, and its mean and largest vector length
in the tokenizer's units. With --png, draws clip --clip: its frames (from the re-encoded
stream) above the flow colours of the same frames (hue = direction: right red, down
yellow, left cyan, up blue-violet; white = still; full colour = the 98th percentile of the
drawn frames' vector lengths, so that a few stray vectors do not wash the rest out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from divot_llm.config import compose_config
from divot_llm.config.schema import MotionFieldConfig
from divot_llm.data.errors import MediaError
from divot_llm.data.motion_vectors import (
    MotionClips,
    motion_clips_from_stream,
    reencode_for_motion,
    stream_frames,
)
from divot_llm.data.motion_viz import motion_strip

FRAME_SIDE = 144  # px: clip frames are decoded at most this wide for the picture


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, help="any video PyAV decodes")
    parser.add_argument("--png", type=Path, metavar="OUT.png", help="draw a clip's frames and motion")
    parser.add_argument("--clip", type=int, default=0, help="which clip to draw (default 0)")
    parser.add_argument("--max-frames", type=int, default=12, help="frames drawn per clip (default 12)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, repeatable, e.g. --set data.motion.gop=6",
    )


def describe(clips: MotionClips) -> list[str]:
    """One line per clip: where it starts and how much it moves."""
    lines = []
    for k, start in enumerate(clips.start_frames):
        length = clips.fields[k].norm(dim=0)  # (F, H, W)
        lines.append(
            f"  clip {k}: frames {start}-{start + clips.fields.shape[2] - 1} "
            f"(from {start / clips.fps:.2f} s), mean |mv| {length.mean():.3f}, max |mv| {length.max():.3f}"
        )
    return lines


def draw_clip(stream: bytes, clips: MotionClips, clip: int, max_frames: int):
    """The clip's frames above its flow colours (a PIL image)."""
    start = int(clips.start_frames[clip])
    frames = np.stack(stream_frames(stream, np.arange(start, start + clips.fields.shape[2]), FRAME_SIDE))
    return motion_strip(clips.fields[clip], frames, max_frames=max_frames)


def run(args: argparse.Namespace) -> int:
    motion: MotionFieldConfig = compose_config(args.overrides).data.motion
    try:
        stream = reencode_for_motion(args.video, motion)
        clips = motion_clips_from_stream(stream, motion)
    except MediaError as exc:
        print(f"{args.video}: no motion clips ({exc.reason}): {exc.detail}")
        return 1
    print(
        f"{args.video}: {clips.num_frames} frames at {clips.fps:g} fps (GOP {motion.gop}), "
        f"{len(clips.start_frames)} clips of {clips.fields.shape[2]} frames, "
        f"fields {tuple(clips.fields.shape[1:])} each"
    )
    print("\n".join(describe(clips)))
    if args.png:
        if not 0 <= args.clip < len(clips.start_frames):
            print(f"error: --clip {args.clip}: the video has clips 0-{len(clips.start_frames) - 1}")
            return 2
        args.png.parent.mkdir(parents=True, exist_ok=True)
        draw_clip(stream, clips, args.clip, args.max_frames).save(args.png)
        print(f"clip {args.clip} -> {args.png}")
    return 0
