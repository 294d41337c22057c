"""Data-loading benchmark: clip sampling vs naive full decoding, per worker.

For each synthetic video (256p and 480p, 10-60 s, h264 with libx264's default keyframe
interval of 250 frames, textured, with per-frame noise (``--grain``) so the files are not
trivially small) and
each training source setting

    comprehension   20 clips, the caption rule (dense=False)
    generation      1 clip

it times, on the same video bytes and the same random clip choices:

    pipeline   what the training loader runs in a worker: sample_video_clips(as_uint8=True)
               seeks + decodes only what the chosen clips need (frames far from every
               chosen time that nothing references are dropped undecoded), converts only
               their frames, and hands them on resized, as uint8 (the trainer scales them
               to [-1, 1] on the accelerator)
    baseline   the naive loader: decode every frame and convert it to RGB
               (video_io.decode_video, PyAV's default decoder settings), then pick the
               same frames and apply the same transform, to float [-1, 1] in the worker

Both give bit-identical clips once the pipeline's are scaled (uint8_to_model_pixels). It prints clips/s and frames/s (sampled frames
delivered, 5 per clip) for both, and their ratio. One process pinned to one core (a
dataloader worker's share, so one decoder thread each) unless --all-cores.

For 30-s videos it also prints where the baseline's time goes and the floor of exact
sampling: the comprehension clips of a 30-s video cover all of it, so every reference
frame (I, P and referenced B) must be decoded whatever the sampler does; decoding just
those (skip_frame=NONREF, no conversion) bounds the comprehension ratio from above.
Run: python tools/bench/data.py [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from dataclasses import dataclass

import av
import numpy as np
import torch

from divot_llm.data.video import (
    clip_positions,
    plan_windows,
    probe_video,
    sample_video_clips,
    to_model_pixels,
)
from divot_llm.data.video_io import decode_video, encode_video

TASKS = {"comprehension": 20, "generation": 1}  # name -> num_clips (dense=False for both)
TARGET_RATIO = 3.0  # the pipeline must beat full decoding by this much on 30-s videos
TARGET_DURATION_S = 30


# ------------------------------------------------------------------------- inputs


class TexturedFrames:
    """Frames of a slow pan over a blocky random texture with a moving square and
    per-frame noise, rendered on demand (a 60-s 480p video would not fit in memory as
    one array). Indexable, so ``encode_video`` can iterate it."""

    def __init__(self, num_frames: int, height: int, width: int, seed: int, grain: int = 24):
        rng = np.random.default_rng(seed)
        blocks = rng.integers(0, 256, (height // 8 + 1, width // 4 + 1, 3), dtype=np.uint8)
        self.texture = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))  # 2x the width
        self.num_frames, self.height, self.width = num_frames, height, width
        self.seed, self.grain = seed, grain

    def __len__(self) -> int:
        return self.num_frames

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_frames:
            raise IndexError(i)  # ends iteration
        x = i % self.width  # pan one pixel per frame, wrapping
        frame = self.texture[: self.height, x : x + self.width].astype(np.int16)
        side = self.height // 4
        top, left = (i * 3) % (self.height - side), (i * 5) % (self.width - side)
        frame[top : top + side, left : left + side] = (255, 255, 255)
        if self.grain:
            rng = np.random.default_rng([self.seed, i])
            frame += rng.integers(-self.grain, self.grain + 1, frame.shape, dtype=np.int16)
        return np.clip(frame, 0, 255).astype(np.uint8)


def make_video(height: int, duration_s: float, fps: int, seed: int, grain: int = 24) -> bytes:
    width = round(height * 16 / 9 / 2) * 2  # 16:9, even for yuv420p
    frames = TexturedFrames(round(duration_s * fps), height, width, seed, grain)
    return encode_video(frames, fps, "h264")


# ----------------------------------------------------------------------- contenders


def pipeline(data: bytes, num_clips: int, rng: np.random.Generator) -> torch.Tensor:
    """(C, 5, 3, 256, 256) uint8, as the training loader's workers deliver them."""
    return sample_video_clips(data, num_clips, rng, dense=False, as_uint8=True)


def baseline(data: bytes, num_clips: int, rng: np.random.Generator) -> torch.Tensor:
    """Naive loading: decode the whole video, then pick what the same rules choose.
    (C, 5, 3, 256, 256) in [-1, 1]: for constant-frame-rate videos the pixels of
    ``pipeline`` scaled by ``uint8_to_model_pixels``."""
    info = probe_video(data)
    windows = plan_windows(info.num_frames, info.fps, num_clips, rng, dense=False)
    indices = windows[:, clip_positions()]  # (C, 5)
    frames = decode_video(data).frames
    pixels = to_model_pixels([frames[min(i, len(frames) - 1)] for i in indices.ravel()])
    return pixels.reshape(*indices.shape, *pixels.shape[1:])


@dataclass
class Timing:
    seconds: float
    clips: int

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.seconds

    @property
    def frames_per_s(self) -> float:
        return 5 * self.clips / self.seconds


def measure(data: bytes, num_clips: int, repeats: int, seed: int) -> tuple[Timing, Timing]:
    """(pipeline, baseline) over ``repeats`` seeded clip choices, the same for both.
    Calls alternate so that load from other processes slows both alike."""
    fast, slow = Timing(0.0, 0), Timing(0.0, 0)
    for r in range(repeats):
        for fn, timing in ((pipeline, fast), (baseline, slow)):
            start = time.perf_counter()
            clips = fn(data, num_clips, np.random.default_rng([seed, r])).shape[0]
            timing.seconds += time.perf_counter() - start
            timing.clips += clips
    return fast, slow


def decode_seconds(data: bytes, repeats: int, skip_frame: str) -> float:
    """Seconds (best of ``repeats``) to decode the video with nothing converted:
    ``skip_frame`` "DEFAULT" decodes every frame, "NONREF" only the frames others
    reference (the floor of exact sampling when targets cover the whole video)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.codec_context.skip_frame = skip_frame
            for _frame in container.decode(stream):
                pass
        best = min(best, time.perf_counter() - start)
    return best


def floor_report(label: str, data: bytes, baseline_s: float, pipeline_s: float, repeats: int) -> str:
    """Per-video seconds: baseline, its decoding alone, the exact floor, the pipeline."""
    decode_all = decode_seconds(data, repeats, "DEFAULT")
    floor = decode_seconds(data, repeats, "NONREF")
    return (
        f"{label}: baseline {baseline_s:.2f} s (decoding alone {decode_all:.2f} s; the rest converts "
        f"and stacks every frame), reference frames only {floor:.2f} s = "
        f"{baseline_s / floor:.1f}x faster than the baseline, pipeline {pipeline_s:.2f} s"
    )


def warm_up() -> None:
    """First calls pay one-off costs (lazy imports, codec tables): not what we measure."""
    measure(make_video(64, 2, 8, seed=0), 1, repeats=1, seed=0)


# --------------------------------------------------------------------------- report


def pin_to_one_core() -> str:
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})  # FFmpeg's thread count follows the affinity
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def print_header(args: argparse.Namespace, pinning: str) -> None:
    print(
        f"# data benchmark: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"{pinning}; python {platform.python_version()}, torch {torch.__version__}, PyAV {av.__version__}"
    )
    print(
        f"# videos: h264 {args.fps} fps, heights {args.heights}, durations {args.durations} s, "
        f"grain +-{args.grain}; {args.repeats} repeats"
    )
    print(
        f"{'task':<14} {'video':<10} {'MB':>6} {'clips':>5} | {'pipeline clips/s':>16} {'frames/s':>9} | "
        f"{'baseline clips/s':>16} {'frames/s':>9} | {'ratio':>6}"
    )


def print_row(task: str, label: str, size_mb: float, fast: Timing, slow: Timing, repeats: int) -> None:
    print(
        f"{task:<14} {label:<10} {size_mb:>6.2f} {fast.clips // repeats:>5} | {fast.clips_per_s:>16.2f} "
        f"{fast.frames_per_s:>9.1f} | {slow.clips_per_s:>16.2f} {slow.frames_per_s:>9.1f} | "
        f"{fast.clips_per_s / slow.clips_per_s:>5.1f}x"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="256p, 10 and 30 s, 2 repeats")
    parser.add_argument("--heights", type=int, nargs="+", help="video heights (default 256 480)")
    parser.add_argument("--durations", type=float, nargs="+", help="video lengths in s (default 10 30 60)")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--repeats", type=int, help="calls per video and task (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--grain",
        type=int,
        default=24,
        help="per-frame noise amplitude: 24 (default) is heavy film grain, ~0.3 bits per pixel "
        "and expensive to decode; 0 gives ~0.02-0.05 bits per pixel",
    )
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args(argv)
    args.heights = args.heights or ([256] if args.quick else [256, 480])
    args.durations = args.durations or ([10, 30] if args.quick else [10, 30, 60])
    args.repeats = args.repeats or (2 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print_header(args, "all cores" if args.all_cores else pin_to_one_core())
    warm_up()
    ratios: dict[str, list[float]] = {task: [] for task in TASKS}
    floors: list[str] = []
    for height in args.heights:
        for duration in args.durations:
            data = make_video(height, duration, args.fps, args.seed, args.grain)
            label = f"{height}p {duration:g}s"
            for task, num_clips in TASKS.items():
                fast, slow = measure(data, num_clips, args.repeats, args.seed)
                print_row(task, label, len(data) / 1e6, fast, slow, args.repeats)
                if duration == TARGET_DURATION_S:
                    ratios[task].append(fast.clips_per_s / slow.clips_per_s)
                    if task == "comprehension":
                        per_video = (slow.seconds / args.repeats, fast.seconds / args.repeats)
                        floors.append(floor_report(label, data, *per_video, args.repeats))
    for task, values in ratios.items():
        if values:
            verdict = "meets" if min(values) >= TARGET_RATIO else "MISSES"
            print(
                f"# {task}, {TARGET_DURATION_S}-s videos: pipeline/baseline >= {min(values):.1f}x ({verdict} the {TARGET_RATIO:g}x target)"
            )
    if floors:
        print("# floor for exact comprehension clips (decode only the reference frames), per video:")
        for line in floors:
            print(f"#   {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
