"""Data-loading benchmark: clip sampling against the naive loader and the exact floor, per
worker, and the reference pretraining mix; exits non-zero when a judged line fails.

For each synthetic video (256p and 480p, 30 s by default, h264 with libx264's default
keyframe interval of 250 frames, a panning texture with per-frame noise, encoded at an
average of ``--bpp`` bits per pixel) and each training source setting

    comprehension   20 clips, the caption rule (dense=False)
    generation      1 clip

it times, on the same video bytes and the same random clip choices:

    pipeline   what the training loader runs in a worker: sample_video_clips(as_uint8=True)
               seeks + decodes only what the chosen clips need (frames far from every
               chosen time that nothing references are dropped undecoded), converts only
               their frames, and hands them on resized (with --resize-kernel, by default
               conf/data/pretrain.yaml's data.resize_kernel), as uint8 (the trainer scales
               them to [-1, 1] on the accelerator)
    baseline   the naive loader: decode every frame and convert it to RGB, kept as a list
               (PyAV's default decoder settings, as video_codec.decode_video), then pick the
               same frames and apply the reference transform (PIL's resize), to float
               [-1, 1] in the worker
    floor      the exact floor (data_floor.py): an oracle that knows the video's layout
               decodes only the reference frames the chosen clips need plus the chosen
               frames, converts only those and delivers the same uint8 clips through the
               same transform, with the pipeline's decoder settings: the least any exact
               sampler can do

The pipeline and the floor give bit-identical clips (each run checks), and with the pil
kernel so does the baseline once the uint8 ones are scaled (uint8_to_model_pixels); with
the torch kernel the pipeline's pixels are within one level of the baseline's. It prints clips/s and frames/s
(sampled frames delivered, 5 per clip) of the pipeline and the baseline, their ratio, the
floor's clips/s and the pipeline's time over the floor's. One process pinned to one core
(a dataloader worker's share, so one decoder thread each) unless --all-cores.

Then (synthetic runs; data_mix.py, data_stream.py) the reference pretraining mix,
conf/data/pretrain.yaml: per source and over the mix, seconds per sample of our loader
(loader.sample_clips) and of the naive one on stand-in WebVid videos and CC3M / JourneyDB
images read through the real loader, our loader resizing as the pipeline above (the
mix's stand-ins: six per source by default, so the WebVid-like lengths and clip choices
span their distributions); and clips/s of a webdataset shard of those videos
read by the loader's source streamed from a loopback HTTP server next to the local file.

Judged, with thresholds from this run's own measurements (30-s synthetic videos):

    generation       pipeline clips/s >= 3x the baseline's, on every video
    comprehension    pipeline time <= 1.10x the exact floor's, on every video
    pretraining mix  naive time per sample >= 3x ours

each printed as "PASS: ..." or "FAIL: ..." with the worst case's figures; any FAIL makes
the exit status 1. (Comprehension is judged against the floor, not the naive loader: its
back-to-back windows cover the whole video, so every reference frame must be decoded,
and on typical-bitrate video that alone is about 3x faster than the naive loader.)

Timing: each of ``--repeats`` seeded clip choices is timed ``--rounds`` times per
contender (every contender as many calls), calls alternating (in reverse order every other
round), and the best time of each choice counts. The naive loader decodes and converts
every frame whichever clips are chosen, so its best call per clip over all the choices
counts: it allocates 0.6 GB (256p) to 2 GB (480p) per 30-s video, so its time swings with
the state of the allocator and the first touch of fresh pages, and the best of a few calls
is its intrinsic cost (and the conservative one for its ratios). Every
contender's first call on a video is untimed (``first_calls``). Pinned to one core, the
clock is the process's CPU time (``time.process_time``): one decoder thread, so it is the
work done, which other processes' turns on the core do not inflate on a shared machine;
with --all-cores it is wall-clock time. A row over the floor margin has every contender's
calls timed again (``RETIMES``), the best calls counting: load only ever slows a call. The streamed shard is timed wall-clock (waiting for bytes counts).

Decoding cost follows bitrate, so the bitrate is set, not left to the encoder: ``--bpp``
0.05, 0.1 and 0.3 by default span web video at these sizes (Apple's HLS Authoring
Specification bitrate ladder for H.264 at 270p-540p, 30 fps: 365 kb/s at 480x270 up to
2000 kb/s at 960x540 are 0.09-0.13 bits per pixel, its lowest rung, 416x234 at 145 kb/s,
0.05). ``--videos FILE ...`` runs the same comparison on your own files instead (any
format the loader reads), printing the bits per pixel of each; they are not judged.
Run: python tools/bench/data.py [--quick] [--bpp X ...] [--videos FILE ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from divot_llm.config.schema import RESIZE_KERNELS
from divot_llm.data.clip_sampling import MediaError, probe_video

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, when imported
from data_floor import VideoLayout, exact_floor_clips, video_layout  # noqa: E402
from data_media import (  # noqa: E402
    DEFAULT_BPP,
    NO_TIME,
    Clock,
    TexturedFrames,  # noqa: F401 - part of this tool's interface (tests render frames with it)
    Timing,
    baseline,
    make_video,
    pipeline,
    race,
)
from data_mix import (  # noqa: E402
    WEBVID_HEIGHT,
    MixResult,
    MixSettings,
    format_mix,
    measure_mix,
    mix_videos,
    reference_resize_kernel,
)
from data_stream import format_stream, measure_stream  # noqa: E402

TASKS = {"comprehension": 20, "generation": 1}  # name -> num_clips (dense=False for both)
NAIVE_FACTOR = 3.0  # generation and the mix must beat the naive loader by this much
FLOOR_MARGIN = 0.10  # comprehension may take this much more time than the exact floor
RETIMES = 2  # at most this many extra rounds for a row over the floor margin
TARGET_DURATION_S = 30  # the judged synthetic videos
DEFAULT_BPPS = [0.05, DEFAULT_BPP, 0.3]
GIVEN = "given videos"


# ------------------------------------------------------------------------- inputs


@dataclass
class BenchVideo:
    label: str
    group: str  # videos judged together: "0.1 bpp" (synthetic, per --bpp) or "given videos"
    data: bytes
    duration_s: float
    bits_per_pixel: float  # file bits over displayed pixels: what decoding costs grow with

    @property
    def judged(self) -> bool:
        return self.group != GIVEN and abs(self.duration_s - TARGET_DURATION_S) < 0.5


def bench_video(label: str, group: str, data: bytes) -> BenchVideo:
    info = probe_video(data)
    pixels = info.num_frames * info.width * info.height
    return BenchVideo(label, group, data, info.num_frames / info.fps, 8 * len(data) / pixels)


def synthetic_videos(args: argparse.Namespace) -> Iterator[BenchVideo]:
    for bpp in args.bpp:
        for height in args.heights:
            for duration in args.durations:
                data = make_video(height, duration, args.fps, args.seed, bpp)
                yield bench_video(f"{height}p {duration:g}s", f"{bpp:g} bpp", data)


def file_videos(paths: list[Path]) -> Iterator[BenchVideo]:
    """The given files, skipping (with a line saying why) any the loader cannot read."""
    for path in paths:
        try:
            yield bench_video(path.name, GIVEN, path.read_bytes())
        except (OSError, MediaError) as err:
            print(f"# skipped {path}: {err}")


# -------------------------------------------------------------------------- timing


def contenders(
    data: bytes, num_clips: int, choice: list[int], layout: VideoLayout | None, kernel: str = "pil"
) -> dict[str, Callable[[], int]]:
    """The calls raced on one clip choice, each returning the clips it delivered (the
    pipeline and the floor resizing with ``kernel``, the naive loader with PIL)."""
    calls = {
        "pipeline": lambda: len(pipeline(data, num_clips, np.random.default_rng(choice), kernel)),
        "baseline": lambda: len(baseline(data, num_clips, np.random.default_rng(choice))),
    }
    if layout is not None:
        calls["floor"] = lambda: len(
            exact_floor_clips(data, layout, num_clips, np.random.default_rng(choice), kernel=kernel)
        )
    return calls


PerChoice = list[dict[str, Timing]]  # each contender's best call on each clip choice


def time_choices(
    data: bytes,
    num_clips: int,
    repeats: int,
    rounds: int,
    seed: int,
    layout: VideoLayout | None,
    names: tuple[str, ...] = ("pipeline", "baseline", "floor"),
    clock: Clock = time.perf_counter,
    kernel: str = "pil",
) -> PerChoice:
    """The named contenders' best of ``rounds`` calls on each of ``repeats`` seeded clip
    choices, the same for all."""
    per_choice = []
    for r in range(repeats):
        calls = {
            n: call for n, call in contenders(data, num_clips, [seed, r], layout, kernel).items() if n in names
        }
        per_choice.append(race(calls, rounds, clock))
    return per_choice


def better_of(first: PerChoice, second: PerChoice) -> PerChoice:
    """Per choice and contender, the faster of two timings of the same calls."""
    return [
        {name: min(timing, b.get(name, timing), key=lambda t: t.seconds) for name, timing in a.items()}
        for a, b in zip(first, second, strict=True)
    ]


def summed(per_choice: PerChoice) -> dict[str, Timing]:
    """The pipeline's and the floor's best calls summed over the choices; the baseline's
    best call per clip over all choices (it decodes and converts every frame whichever
    clips are chosen), times the choices' clips."""
    totals: dict[str, Timing] = {}
    for choice in per_choice:
        for name, timing in choice.items():
            if name != "baseline":
                totals[name] = totals.get(name, NO_TIME) + timing
    baseline_calls = [choice["baseline"] for choice in per_choice if "baseline" in choice]
    if baseline_calls:
        clips = totals["pipeline"].clips
        totals["baseline"] = Timing(min(t.seconds / t.clips for t in baseline_calls) * clips, clips)
    return totals


def measure(
    data: bytes,
    num_clips: int,
    repeats: int,
    rounds: int,
    seed: int,
    layout: VideoLayout | None = None,
    clock: Clock = time.perf_counter,
    kernel: str = "pil",
) -> dict[str, Timing]:
    """Pipeline, baseline (and with a ``layout`` the floor) over ``repeats`` seeded clip
    choices: ``time_choices``, ``summed``."""
    return summed(time_choices(data, num_clips, repeats, rounds, seed, layout, clock=clock, kernel=kernel))


def first_calls(video: BenchVideo, num_clips: int, seed: int, kernel: str = "pil") -> VideoLayout | None:
    """Every contender's first call on a video and task, untimed: a first call pays the
    first touch of memory pages a bigger or newer video needs (the naive loader's first
    call on a video took up to twice as long as its later ones), which a worker in its stride does not.
    Returns the floor oracle's view of the video once the floor's clips are seen to equal
    the pipeline's (None, with a line saying why, for a file it cannot handle)."""
    baseline(video.data, num_clips, np.random.default_rng([seed, 0]))
    try:
        layout = video_layout(video.data)
        floor = exact_floor_clips(video.data, layout, num_clips, np.random.default_rng([seed, 0]), kernel=kernel)
    except (MediaError, av.error.FFmpegError, RuntimeError) as err:
        print(f"# no floor for {video.label}: {err}")
        return None
    if not torch.equal(floor, pipeline(video.data, num_clips, np.random.default_rng([seed, 0]), kernel)):
        raise AssertionError(f"the floor's clips differ from the pipeline's on {video.label} ({video.group})")
    return layout


def warm_up(kernel: str) -> None:
    """First calls pay one-off costs (lazy imports, codec tables): not what we measure."""
    data = make_video(64, 2, 8, seed=0)
    measure(data, 1, repeats=1, rounds=1, seed=0, layout=video_layout(data), kernel=kernel)


# --------------------------------------------------------------------------- report


@dataclass
class Row:
    task: str
    video: BenchVideo
    timings: dict[str, Timing]
    repeats: int
    retimed: int = 0  # extra rounds of every contender's calls (``measured_row``)

    @property
    def naive_ratio(self) -> float:
        return self.timings["pipeline"].clips_per_s / self.timings["baseline"].clips_per_s

    @property
    def floor_ratio(self) -> float | None:
        """Pipeline time over the floor's (None without a floor)."""
        floor = self.timings.get("floor")
        return None if floor is None else self.timings["pipeline"].seconds / floor.seconds

    def seconds_per_call(self, name: str) -> float:
        return self.timings[name].seconds / self.repeats

    @property
    def where(self) -> str:
        return f"{self.video.label} at {self.video.group}"


def pin_to_one_core() -> bool:
    """One thread on one core, as a dataloader worker has; False where the OS cannot pin."""
    torch.set_num_threads(1)
    if not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # FFmpeg's thread count follows the affinity
    return True


def load_average() -> str:
    """The machine's load: other processes share the cores the timings ran on."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def print_header(args: argparse.Namespace, pinning: str) -> None:
    print(
        f"# data benchmark: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"{pinning}; python {platform.python_version()}, torch {torch.__version__}, PyAV {av.__version__}; "
        f"load average {load_average()}"
    )
    timing = (
        f"{args.repeats} clip choices, best of {args.rounds} calls each; the pipeline and the floor resize "
        f"with {args.resize_kernel}, the naive loader with pil"
    )
    if args.videos:
        print(f"# videos: {len(args.videos)} given files; {timing}")
    else:
        print(
            f"# videos: synthetic h264 {args.fps} fps at {args.bpp} bits per pixel, heights {args.heights}, "
            f"durations {args.durations} s; {timing}"
        )
    print(
        f"{'task':<14} {'video':<10} {'MB':>6} {'bpp':>5} {'clips':>5} | {'pipeline clips/s':>16} {'frames/s':>9} | "
        f"{'baseline clips/s':>16} {'frames/s':>9} | {'ratio':>6} | {'floor clips/s':>13} {'vs floor':>8}"
    )


def print_row(row: Row) -> None:
    fast, slow, video = row.timings["pipeline"], row.timings["baseline"], row.video
    floor = row.timings.get("floor")
    floor_cells = (
        f"{'-':>13} {'-':>8}" if floor is None else f"{floor.clips_per_s:>13.2f} {row.floor_ratio:>7.3f}x"
    )
    print(
        f"{row.task:<14} {video.label:<10} {len(video.data) / 1e6:>6.2f} {video.bits_per_pixel:>5.3f} "
        f"{fast.clips // row.repeats:>5} | {fast.clips_per_s:>16.2f} {fast.frames_per_s:>9.1f} | "
        f"{slow.clips_per_s:>16.2f} {slow.frames_per_s:>9.1f} | {row.naive_ratio:>5.1f}x | {floor_cells}"
        + (f" (retimed {row.retimed}x)" if row.retimed else ""),
        flush=True,
    )


def print_ranges(rows: list[Row]) -> None:
    """Per (task, group) of judged or given videos: the naive ratio's and the floor
    ratio's range."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        if row.video.judged or row.video.group == GIVEN:
            groups.setdefault((row.task, row.video.group), []).append(row)
    for (task, group), members in groups.items():
        where = GIVEN if group == GIVEN else f"{TARGET_DURATION_S}-s videos at {group}"
        naive = [r.naive_ratio for r in members]
        floors = [r.floor_ratio for r in members if r.floor_ratio is not None]
        vs_floor = f"; pipeline time / exact floor {min(floors):.3f} to {max(floors):.3f}" if floors else ""
        print(f"# {task}, {where}: pipeline/baseline {min(naive):.1f}x to {max(naive):.1f}x{vs_floor}")


# ---------------------------------------------------------------------- judgement


@dataclass
class Verdict:
    what: str
    passed: bool | None  # None: nothing to judge in this run
    detail: str

    @property
    def line(self) -> str:
        word = "SKIPPED" if self.passed is None else "PASS" if self.passed else "FAIL"
        return f"{word}: {self.what}: {self.detail}"


def judged_scope(rows: list[Row]) -> str:
    heights = sorted({r.video.label.split()[0] for r in rows})
    groups = list(dict.fromkeys(r.video.group for r in rows))
    return f"{TARGET_DURATION_S}-s videos, {' '.join(heights)} at {', '.join(groups)}"


def judge_generation(rows: list[Row]) -> Verdict:
    what = f"generation >= {NAIVE_FACTOR:g}x the naive loader"
    judged = [r for r in rows if r.task == "generation" and r.video.judged]
    if not judged:
        return Verdict(what, None, f"no {TARGET_DURATION_S}-s synthetic video in this run")
    worst = min(judged, key=lambda r: r.naive_ratio)
    fast, slow = worst.timings["pipeline"].clips_per_s, worst.timings["baseline"].clips_per_s
    return Verdict(
        what,
        worst.naive_ratio >= NAIVE_FACTOR,
        f"worst {worst.where}: {fast:.2f} clips/s vs {NAIVE_FACTOR:g} x {slow:.3f} = {NAIVE_FACTOR * slow:.3f} "
        f"clips/s ({worst.naive_ratio:.1f}x; {judged_scope(judged)})",
    )


def judge_comprehension(rows: list[Row]) -> Verdict:
    what = f"comprehension within {FLOOR_MARGIN:.0%} of the exact floor"
    judged = [r for r in rows if r.task == "comprehension" and r.video.judged and r.floor_ratio is not None]
    if not judged:
        return Verdict(what, None, f"no {TARGET_DURATION_S}-s synthetic video in this run")
    worst = max(judged, key=lambda r: r.floor_ratio)
    took, floor = worst.seconds_per_call("pipeline"), worst.seconds_per_call("floor")
    limit = (1 + FLOOR_MARGIN) * floor
    return Verdict(
        what,
        took <= limit,
        f"worst {worst.where}: {took:.3f} s vs {1 + FLOOR_MARGIN:g} x {floor:.3f} s = {limit:.3f} s "
        f"({worst.floor_ratio - 1:+.1%}; per clip choice; {judged_scope(judged)})",
    )


def judge_mix(mix: MixResult | None) -> Verdict:
    what = f"pretraining mix >= {NAIVE_FACTOR:g}x the naive loader in time per sample"
    if mix is None:
        return Verdict(what, None, "not measured in this run (--mix-samples 0 or --videos)")
    limit = mix.naive_s / NAIVE_FACTOR
    weights = ", ".join(f"{s.name} {s.weight:g}" for s in mix.sources)
    return Verdict(
        what,
        mix.ours_s <= limit,
        f"{mix.ours_s:.4f} s vs {mix.naive_s:.4f} s / {NAIVE_FACTOR:g} = {limit:.4f} s "
        f"({mix.naive_s / mix.ours_s:.1f}x; {weights})",
    )


# ----------------------------------------------------------------------------- run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="256p at 0.1 bpp, one clip choice, 2 mix samples per source"
    )
    parser.add_argument("--heights", type=int, nargs="+", help="video heights (default 256 480)")
    parser.add_argument(
        "--durations",
        type=float,
        nargs="+",
        help=f"video lengths in s (default {TARGET_DURATION_S}: the judged one)",
    )
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--repeats", type=int, help="seeded clip choices per video and task (default 2)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="timed calls per clip choice (or mix sample, or shard pass) of the pipeline and the floor; the best counts",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bpp",
        type=float,
        nargs="+",
        help=f"average bits per pixel of the synthetic videos (default {' '.join(map(str, DEFAULT_BPPS))}: "
        "web H.264 at these sizes, its low end, typical, high end)",
    )
    parser.add_argument(
        "--videos",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="benchmark these video files instead of synthetic ones (the synthetic-video options, the mix "
        "and the streamed shard are left out)",
    )
    parser.add_argument(
        "--mix-samples", type=int, help="samples per source of the pretraining mix (default 6; 0: no mix)"
    )
    parser.add_argument(
        "--mix-height", type=int, default=WEBVID_HEIGHT, help="height of the mix's WebVid-like videos"
    )
    parser.add_argument(
        "--resize-kernel",
        choices=RESIZE_KERNELS,
        default=reference_resize_kernel(),
        help="the pipeline's and the floor's frame resize, data.resize_kernel (default: conf/data/pretrain.yaml's, "
        "%(default)s); the naive loader resizes with PIL, as the reference",
    )
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args(argv)
    args.heights = args.heights or ([256] if args.quick else [256, 480])
    args.durations = args.durations or [TARGET_DURATION_S]
    args.bpp = args.bpp or ([DEFAULT_BPP] if args.quick else DEFAULT_BPPS)
    args.repeats = args.repeats or (1 if args.quick else 2)
    args.mix_samples = (2 if args.quick else 6) if args.mix_samples is None else args.mix_samples
    if args.videos:
        args.mix_samples = 0
    return args


def measured_row(video: BenchVideo, task: str, num_clips: int, args: argparse.Namespace) -> Row:
    """One video and task timed; a row over the floor margin has every contender's calls
    timed again (``RETIMES`` times at most, the best calls counting): load from other
    processes only ever slows a call, so more calls only bring both nearer their cost."""
    layout = first_calls(video, num_clips, args.seed, args.resize_kernel)
    timed = (video.data, num_clips, args.repeats, args.rounds, args.seed, layout)
    per_choice = time_choices(*timed, clock=args.clock, kernel=args.resize_kernel)
    row = Row(task, video, summed(per_choice), args.repeats)
    while row.floor_ratio is not None and row.floor_ratio > 1 + FLOOR_MARGIN and row.retimed < RETIMES:
        again = time_choices(*timed, clock=args.clock, kernel=args.resize_kernel)  # every contender
        per_choice = better_of(per_choice, again)
        row = Row(task, video, summed(per_choice), args.repeats, retimed=row.retimed + 1)
    return row


def clip_rows(args: argparse.Namespace) -> list[Row]:
    """Every video x task, printed as measured."""
    rows: list[Row] = []
    videos = file_videos(args.videos) if args.videos else synthetic_videos(args)
    for video in videos:
        for task, num_clips in TASKS.items():
            try:
                rows.append(measured_row(video, task, num_clips, args))
            except MediaError as err:  # a given file that probes but does not decode
                print(f"# skipped {video.label}: {err}")
                break
            print_row(rows[-1])
    return rows


def mix_and_stream(args: argparse.Namespace) -> MixResult | None:
    """The pretraining mix, then its videos as a streamed and a local shard (both printed)."""
    if args.mix_samples < 1:
        return None
    settings = MixSettings(
        args.mix_samples,
        args.mix_height,
        args.fps,
        DEFAULT_BPP,
        args.rounds,
        args.seed,
        args.clock,
        args.resize_kernel,
    )
    with tempfile.TemporaryDirectory(prefix="divot-bench-data-") as tmp:
        root = Path(tmp)
        mix = measure_mix(root, settings)
        for line in format_mix(mix, settings):
            print(line, flush=True)
        stream = measure_stream(root, mix_videos(root), args.rounds, args.seed)
        print(format_stream(stream, args.rounds), flush=True)
    return mix


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pinned = not args.all_cores and pin_to_one_core()
    args.clock = time.process_time if pinned else time.perf_counter
    print_header(args, "pinned to one core, CPU time" if pinned else "all cores, wall-clock time")
    warm_up(args.resize_kernel)
    rows = clip_rows(args)
    print_ranges(rows)
    mix = mix_and_stream(args)
    verdicts = [judge_generation(rows), judge_comprehension(rows), judge_mix(mix)]
    print(f"# load average at the end {load_average()}")
    for verdict in verdicts:
        print(verdict.line)
    return 1 if any(v.passed is False for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
