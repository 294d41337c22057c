"""The reference pretraining mix, per sample: our loader against the naive one.

The mix is ``conf/data/pretrain.yaml`` (divot-reference §7.5/§7.6): four sources weighted
1.3 / 1.0 / 0.3 / 0.3, each batch drawn from one source (probabilities .448 / .345 /
.103 / .103) with that source's batch size (8 / 32 / 32 / 32). A sample of each is

    webvid_comp     a WebVid video, the caption rule's clips (up to 20)
    webvid_gen      a WebVid video, one clip
    cc3m_comp       a CC3M image, one static clip
    journeydb_gen   a JourneyDB image, one static clip

Stand-ins are written under a temporary ``data.root`` in the config's own layout and read
through the real loader (``loader_spec`` + ``open_source``): WebVid-like videos at
WebVid-10M's preview size (596x336) with WebVid-like lengths (log-normal, median 15 s,
clipped to 4-60 s as ``gpu_7b.py`` draws them: here its quantiles, so a few videos span
the distribution), CC3M-like 640x480 JPEGs and JourneyDB-like 1024x1024 JPEGs (Midjourney's
square output). Per sample, "ours" is ``loader.sample_clips`` (what a dataloader worker
runs: uint8 clips, resized with the config's ``data.resize_kernel``) and the naive loader
decodes every frame (``data_media.baseline``) or transforms the image to float and repeats
it (``naive_image_clip``), resizing with PIL as the reference does.

A source's time per sample is the mean over its samples of each one's best call. Over the
mix a sample costs the batch-weighted mean: a source's share of samples is its batch
probability times its batch size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch
from data_media import NO_TIME, Clock, baseline, make_jpeg, make_video, naive_image_clip, race
from omegaconf import OmegaConf

from data_recipes.shards import SHARD_PATTERN, Sample, write_shards
from divot_llm.config.loading import CONF_DIR, to_typed
from divot_llm.config.schema import DataConfig, SourceConfig
from divot_llm.data.loader import LoaderSpec, loader_spec, open_source, sample_clips
from divot_llm.data.sequences import COMPREHENSION_TASKS
from divot_llm.data.sources import Consumer, RawSample

WEBVID_HEIGHT = 336  # WebVid-10M's previews are 596x336
WEBVID_MEDIAN_S, WEBVID_SIGMA, WEBVID_RANGE_S = 15.0, 0.6, (4.0, 60.0)  # as tools/bench/gpu_7b.py
IMAGE_SIZES = {"cc3m_comp": (640, 480), "journeydb_gen": (1024, 1024)}  # (width, height)
VIDEO_SOURCES = ("webvid_comp", "webvid_gen")
PRETRAIN_YAML = CONF_DIR / "data" / "pretrain.yaml"
VIDEO_NAME, VIDEO_GLOB = "webvid-{:03d}.mp4", "webvid-*.mp4"


@dataclass(frozen=True)
class MixSettings:
    samples: int  # per source
    height: int
    fps: int
    bpp: float
    rounds: int  # calls per sample of each loader, the best counting
    seed: int
    clock: Clock = time.perf_counter
    resize_kernel: str | None = None  # None: the config's data.resize_kernel


@dataclass
class SourceCost:
    name: str
    weight: float
    batch_size: int
    what: str
    ours_s: float  # mean seconds per sample
    naive_s: float
    clips: float  # mean clips per sample


@dataclass
class MixResult:
    sources: list[SourceCost]
    resize_kernel: str = "pil"  # ours (the naive loader resizes with PIL)

    def batch_probability(self, cost: SourceCost) -> float:
        return cost.weight / sum(s.weight for s in self.sources)

    def sample_share(self, cost: SourceCost) -> float:
        """The fraction of the mix's samples that come from this source."""
        per_batch = {s.name: self.batch_probability(s) * s.batch_size for s in self.sources}
        return per_batch[cost.name] / sum(per_batch.values())

    @property
    def ours_s(self) -> float:
        return sum(self.sample_share(s) * s.ours_s for s in self.sources)

    @property
    def naive_s(self) -> float:
        return sum(self.sample_share(s) * s.naive_s for s in self.sources)


def webvid_durations(count: int) -> list[float]:
    """``count`` WebVid-like lengths in seconds: the distribution's quantiles at
    (k + 0.5) / count, so even a few videos span it."""
    quantiles = (np.arange(count) + 0.5) / count
    z = np.array([NormalDist().inv_cdf(q) for q in quantiles])
    seconds = WEBVID_MEDIAN_S * np.exp(WEBVID_SIGMA * z)
    return [round(float(s), 1) for s in np.clip(seconds, *WEBVID_RANGE_S)]


def reference_data_config(root: Path, resize_kernel: str | None = None) -> DataConfig:
    """``conf/data/pretrain.yaml`` on the data schema with ``data.root`` set (what
    ``data=pretrain`` composes to, without starting Hydra), and ``data.resize_kernel`` if
    given; refuses a config whose sources are not the four this benchmark writes
    stand-ins for."""
    overrides = {"root": str(root)} | ({"resize_kernel": resize_kernel} if resize_kernel else {})
    node = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(PRETRAIN_YAML), overrides)
    data = to_typed(node)
    expected = set(VIDEO_SOURCES) | set(IMAGE_SIZES)
    if set(data.sources) != expected:
        raise ValueError(f"{PRETRAIN_YAML} has sources {sorted(data.sources)}, expected {sorted(expected)}")
    return data


def reference_resize_kernel() -> str:
    """The frame resize ``conf/data/pretrain.yaml`` trains with (``data.resize_kernel``)."""
    return reference_data_config(Path(".")).resize_kernel


def bench_file(root: Path, pattern: str, name: str) -> Path:
    """The file a path pattern of the config (``WebVid/annos/*.jsonl``) matches, named ``name``."""
    path = root / Path(pattern).parent / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_videos(root: Path, src: SourceConfig, settings: MixSettings) -> list[float]:
    """WebVid-like videos and their jsonl under the source's paths; their lengths."""
    durations = webvid_durations(settings.samples)
    media_root = root / (src.media_root or ".")
    media_root.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, duration in enumerate(durations):
        video = make_video(settings.height, duration, settings.fps, settings.seed + index, settings.bpp)
        (media_root / VIDEO_NAME.format(index)).write_bytes(video)
        lines.append(json.dumps({"video": VIDEO_NAME.format(index), "caption": "a bench video"}))
    bench_file(root, src.paths[0], "bench.jsonl").write_text("\n".join(lines) + "\n")
    return durations


def write_images(root: Path, name: str, src: SourceConfig, settings: MixSettings) -> None:
    """JPEGs of the source's stand-in size in one webdataset shard under its paths."""
    width, height = IMAGE_SIZES[name]
    samples = [
        Sample(f"{name}-{i}", {"jpg": make_jpeg(width, height, settings.seed + i), "txt": b"a bench image"})
        for i in range(settings.samples)
    ]
    shard = bench_file(root, src.paths[0], "bench.tar")
    write_shards(shard.parent, samples, [range(len(samples))], lambda _n: None)
    (shard.parent / SHARD_PATTERN.format(0)).rename(shard)


def write_mix_data(root: Path, data: DataConfig, settings: MixSettings) -> dict[str, str]:
    """Stand-ins for every source under ``root``; what a sample of each is."""
    durations = write_videos(root, data.sources[VIDEO_SOURCES[0]], settings)
    for other in VIDEO_SOURCES[1:]:
        if data.sources[other].paths != data.sources[VIDEO_SOURCES[0]].paths:
            raise ValueError(f"{other} no longer reads {VIDEO_SOURCES[0]}'s videos")
    width = round(settings.height * 16 / 9 / 2) * 2
    lengths = f"{min(durations):g}-{max(durations):g}" if len(set(durations)) > 1 else f"{durations[0]:g}"
    video = f"{width}x{settings.height} {lengths} s video"
    what = dict.fromkeys(VIDEO_SOURCES, video)
    for name, (w, h) in IMAGE_SIZES.items():
        write_images(root, name, data.sources[name], settings)
        what[name] = f"{w}x{h} JPEG"
    return what


def mix_videos(root: Path) -> list[bytes]:
    """The WebVid-like videos ``measure_mix`` wrote under ``root``, in order."""
    return [path.read_bytes() for path in sorted(root.rglob(VIDEO_GLOB))]


def clips_per_sample(src: SourceConfig) -> int:
    """The clips a video sample of this source asks for (``loader.sample_clips``'s rule)."""
    return src.num_clips if src.task.value in COMPREHENSION_TASKS else 1


def naive_clips(raw: RawSample, src: SourceConfig, rng: np.random.Generator) -> torch.Tensor:
    if raw.media_kind == "image":
        return naive_image_clip(raw.media)
    return baseline(raw.media, clips_per_sample(src), rng)


def sample_calls(
    raw: RawSample, src: SourceConfig, spec: LoaderSpec, choice: list[int]
) -> dict[str, Callable[[], int]]:
    """Our loader and the naive one on one sample, each returning the clips it made."""
    return {
        "ours": lambda: len(sample_clips(raw, src, spec, np.random.default_rng(choice))),
        "naive": lambda: len(naive_clips(raw, src, np.random.default_rng(choice))),
    }


def source_cost(
    spec: LoaderSpec, name: str, src: SourceConfig, what: str, settings: MixSettings
) -> SourceCost:
    """Mean seconds per sample of a source, ours and naive, each sample's best call."""
    samples = list(open_source(spec, name, src, Consumer(), infinite=False))
    if len(samples) != settings.samples:
        raise RuntimeError(f"{name}: the loader read {len(samples)} of {settings.samples} samples")
    ours = naive = NO_TIME
    for index, raw in enumerate(samples):
        calls = sample_calls(raw, src, spec, [settings.seed, index])
        for call in calls.values():
            call()  # untimed: a first call pays the first touch of the memory it needs (data.first_calls)
        best = race(calls, settings.rounds, settings.clock)
        ours, naive = ours + best["ours"], naive + best["naive"]
    n = len(samples)
    return SourceCost(
        name, src.weight, src.batch_size, what, ours.seconds / n, naive.seconds / n, ours.clips / n
    )


def measure_mix(root: Path, settings: MixSettings) -> MixResult:
    """Write the stand-ins under ``root`` and time every source of the reference mix."""
    data = reference_data_config(root, settings.resize_kernel)
    what = write_mix_data(root, data, settings)
    spec = loader_spec(data, tokens_per_clip=64, frames_per_clip=5, image_size=256)
    return MixResult(
        [source_cost(spec, name, src, what[name], settings) for name, src in spec.sources.items()],
        data.resize_kernel,
    )


def format_mix(result: MixResult, settings: MixSettings) -> list[str]:
    """The per-source table and the mix's line."""
    lines = [
        f"# reference pretraining mix (conf/data/pretrain.yaml), samples per source: {settings.samples}, "
        f"each loader's best of {settings.rounds} calls, ours resizing with {result.resize_kernel} (the naive "
        "loader with PIL); seconds per sample:",
        f"{'source':<14} {'weight':>6} {'batch':>5} {'P(batch)':>8} {'share':>7} | {'sample':<28} "
        f"{'clips':>5} | {'ours s':>8} {'naive s':>8} | {'ratio':>6}",
    ]
    for s in result.sources:
        lines.append(
            f"{s.name:<14} {s.weight:>6g} {s.batch_size:>5} {result.batch_probability(s):>8.3f} "
            f"{result.sample_share(s):>7.3f} | {s.what:<28} {s.clips:>5.1f} | {s.ours_s:>8.4f} {s.naive_s:>8.4f} | "
            f"{s.naive_s / s.ours_s:>5.1f}x"
        )
    lines.append(
        f"{'mix':<14} {'':>6} {'':>5} {'':>8} {1:>7.3f} | {'per sample':<28} {'':>5} | "
        f"{result.ours_s:>8.4f} {result.naive_s:>8.4f} | {result.naive_s / result.ours_s:>5.1f}x"
    )
    return lines
