"""Motion-vector extraction benchmark: clips/s of one worker (one process, one decoder
thread) on 30-s videos, with the re-encode and the vector decode timed separately.

For each ``--sizes`` height it makes a synthetic video (a noise-textured background panning
under a square moving the other way, 16:9, h264 at ``--input-fps``), then times, best of
``--repeats``:

- re-encode: decode + ``fps`` filter + MPEG-4 Part 2 encode (``reencode_for_motion``);
- MV decode: decode with exported vectors + per-frame macroblock pooling (``pooled_motion``);
- clips: clip selection + the frame-``gop`` fill + bicubic resize (``clip_starts``, ``clip_fields``).

clips/s = the video's clips (``data.motion`` defaults: 7 from 30 s) / the three together.

    python tools/bench/motion.py                       # 480p and 256p, 30 s
    python tools/bench/motion.py --sizes 1080 --repeats 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from divot_llm.config.schema import MotionFieldConfig
from divot_llm.data.motion_vectors import clip_fields, clip_starts, pooled_motion, reencode_for_motion
from divot_llm.data.video_codec import encode_video


def synthetic_video(height: int, seconds: float, fps: float) -> bytes:
    """An h264 video of ``seconds`` at ``fps``, 16:9 (even sizes), with motion everywhere."""
    width = 2 * round(height * 16 / 9 / 2)
    rng = np.random.default_rng(0)
    frames = int(seconds * fps)
    # a texture twice the frame, panned 2 px/frame right; a square moving left across it
    texture = rng.integers(0, 256, (height, width + 2 * frames + 1, 3), dtype=np.uint8)
    side = height // 4

    def frame(t: int) -> np.ndarray:
        image = texture[:, 2 * t : 2 * t + width].copy()
        x = (width - side) - (t * 3) % (width - side)
        image[height // 3 : height // 3 + side, x : x + side] = (230, 40, 40)
        return image

    return encode_video(_Frames(frame, frames), fps, "h264")


class _Frames(Sequence):
    """Frames made on demand: 30 s of 480p held at once would take 0.9 GB."""

    def __init__(self, make: Callable[[int], np.ndarray], count: int):
        self.make, self.count = make, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, t):
        if not 0 <= t < self.count:
            raise IndexError(t)
        return self.make(t)


def best_s(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def bench_size(height: int, args: argparse.Namespace, motion: MotionFieldConfig) -> None:
    video = synthetic_video(height, args.seconds, args.input_fps)
    reencode_s, stream = best_s(lambda: reencode_for_motion(video, motion, threads=1), args.repeats)
    decode_s, pooled = best_s(lambda: pooled_motion(stream, motion, threads=1), args.repeats)

    def clips():
        return clip_fields(pooled, clip_starts(pooled.frame_types, motion), motion)

    clips_s, fields = best_s(clips, args.repeats)
    total = reencode_s + decode_s + clips_s
    print(
        f"{pooled.width}x{pooled.height} {args.seconds:g} s: {len(video) / 1e6:.1f} MB in, "
        f"{len(pooled.frame_types)} frames at {motion.fps:g} fps, {len(fields)} clips | "
        f"re-encode {reencode_s:7.3f} s | MV decode {decode_s:7.3f} s | clips {clips_s:6.3f} s | "
        f"{len(fields) / total:6.2f} clips/s, {args.seconds / total:5.1f}x real time"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[480, 256], help="video heights, px")
    parser.add_argument("--seconds", type=float, default=30.0, help="video length")
    parser.add_argument("--input-fps", type=float, default=24.0, help="frame rate of the synthetic input")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one worker: one core
    motion = MotionFieldConfig()
    print(
        f"motion bench: one worker, 1 decoder thread; MPEG-4 at {motion.fps:g} fps, GOP {motion.gop}, "
        f"{motion.bitrate / 1e6:g} Mb/s; fields {motion.clip_frames}x{motion.height}x{motion.width}"
    )
    for height in args.sizes:
        bench_size(height, args, motion)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
