"""Synthetic, learnable video/image data: coloured shapes moving over a coloured background.

Every caption is determined by the pixels ("a red circle moving left on a blue
background"), so a model trained on this data can be seen to learn: comprehension must
name the colours, shape and direction; generation must paint them.

The set is written as real encoded media (h264/mpeg4 mp4, vp9 webm, gif; jpg/png images)
in the formats the pipeline reads (divot-reference.md §7.2):

    <out>/train/videos/shard-NNNNN.tar   <key>.mp4|webm|gif + <key>.txt + <key>.json
    <out>/train/images/shard-NNNNN.tar   <key>.jpg|png      + <key>.txt + <key>.json
    <out>/val/videos/shard-NNNNN.tar     held-out videos, same layout
    <out>/media/videos/<key>.<ext>       the train and val videos as files, for the jsonl files
    <out>/media/images/<key>.<ext>
    <out>/annotations/video_caption.jsonl  {"video", "caption": str | [str, ...]}
    <out>/annotations/video_qa.jsonl       {"video", "question", "answer"} | {"video", "questions", "answers"}
    <out>/annotations/image_qa.jsonl       {"image", "questions", "answers"} | {"image", "data": [q, a, ...]}
    <out>/annotations/val_video_qa.jsonl   held-out val videos: the shape-colour question + answer
    <out>/annotations/val_video_caption.jsonl  held-out val videos: {"video", "caption"} (first template)
    <out>/annotations/vidtok_train.csv, vidtok_val.csv  VidTok's layout: a `videos` column of paths under media/
    <out>/manifest.json

Everything is a pure function of the seed: each sample draws from its own generator
seeded by (seed, split, index), and encoding is byte-deterministic.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import itertools
import json
import math
import multiprocessing
import re
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from divot_llm.data.video_codec import VIDEO_CODECS, encode_video

# Colours exactly representable in gif's 3-3-2 palette (R,G in 0,36,..,255 steps; B in
# 0,85,170,255) and far apart in RGB, so compression never turns one into another.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (218, 0, 0),
    "green": (0, 182, 0),
    "blue": (0, 72, 255),
    "yellow": (255, 218, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "purple": (145, 0, 170),
    "orange": (255, 109, 0),
    "cyan": (0, 218, 255),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

VIDEO_SIZES = ((256, 256), (320, 240), (240, 320), (192, 144), (384, 216), (160, 160))  # (W, H)
IMAGE_SIZES = ((256, 256), (320, 240), (240, 320), (400, 300), (200, 200))
FRAME_RATES = (8, 12, 24, 25, 30)
# Codec by index, cycling: 60% h264, 15% mpeg4, 15% vp9, 10% gif, and any four
# consecutive videos from the start cover all four codecs (small test sets included).
CODEC_CYCLE = (
    "h264", "mpeg4", "vp9", "gif", "h264", "h264", "h264", "mpeg4", "h264", "vp9",
    "h264", "h264", "gif", "h264", "mpeg4", "h264", "vp9", "h264", "h264", "h264",
)  # fmt: skip
VFR_EVERY = 5  # every 5th video (index 4, 9, ...) gets jittered frame times if it is h264
ROTATED_EVERY = 7  # every 7th (index 6, 13, ...) is stored sideways + a display rotation, if h264
_SPLIT_CODE = {"train": 0, "val": 1, "image": 2}


@dataclass(frozen=True)
class Scene:
    """What a sample shows; the caption and QA are derived from it alone."""

    shape: str
    color: str
    background: str
    direction: str | None  # None for still images
    radius_frac: float  # shape radius as a fraction of min(W, H)

    def caption(self, variant: int = 0) -> str:
        s, c, b = self.shape, self.color, self.background
        if self.direction is None:
            templates = (
                f"a {c} {s} on a {b} background",
                f"a picture of a {c} {s} over a {b} background",
                f"a {b} background with a {c} {s} in it",
            )
        else:
            d = self.direction
            templates = (
                f"a {c} {s} moving {d} on a {b} background",
                f"a video of a {c} {s} that moves {d} over a {b} background",
                f"a {b} background with a {c} {s} sliding {d}",
            )
        return templates[variant % len(templates)]

    def captions(self) -> list[str]:
        return [self.caption(i) for i in range(3)]

    def qa_pairs(self) -> list[tuple[str, str]]:
        medium = "image" if self.direction is None else "video"
        pairs = [
            (f"What color is the shape in the {medium}?", f"The {self.shape} is {self.color}."),
            (f"What shape is shown in the {medium}?", f"It is a {self.shape}."),
            ("What color is the background?", f"The background is {self.background}."),
            (f"Describe the {medium}.", self.caption(0).capitalize() + "."),
        ]
        if self.direction is not None:
            pairs.insert(
                2, (f"Which direction is the {self.shape} moving?", f"It is moving {self.direction}.")
            )
        return pairs


@dataclass(frozen=True)
class VideoSpec:
    key: str
    scene: Scene
    width: int
    height: int
    fps: int
    duration_s: float
    codec: str
    variable_frame_rate: bool
    display_rotation: int  # stored rotated clockwise by this much; players rotate it back
    speed_frac: float  # distance per second as a fraction of the frame extent along the motion
    start_frac: tuple[float, float]  # initial centre (x, y) as fractions of (W, H)

    @property
    def extension(self) -> str:
        return VIDEO_CODECS[self.codec].extension


@functools.lru_cache(maxsize=16)
def _pixel_coords(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row (H,) and column (W,) coordinates float32 of a frame size, computed once (read-only)."""
    ys, xs = np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


@functools.lru_cache(maxsize=64)
def _plain_frame(height: int, width: int, color: str) -> np.ndarray:
    """A frame (H, W, 3) of one palette colour (read-only: copy it to draw on it)."""
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[:] = COLORS[color]
    frame.flags.writeable = False
    return frame


def _draw_scene(scene: Scene, width: int, height: int, centers_xy: list[tuple[float, float]]) -> np.ndarray:
    """Render one RGB frame (H, W, 3) with a copy of the shape at each centre (pixels)."""
    frame = _plain_frame(height, width, scene.background).copy()
    _draw_shape(frame, scene, centers_xy)
    return frame


def _draw_shape(frame_hw3: np.ndarray, scene: Scene, centers_xy: list[tuple[float, float]]) -> None:
    """Paint the scene's shape at each centre (pixels) onto a background frame, in place.

    Each shape is tested only inside its bounding box (every test below is false farther
    than ``r`` from its centre), and on the box's row and column offsets, broadcast: the
    same float32 arithmetic per pixel as on whole coordinate grids, so the same pixels,
    several times faster -- rendering is most of the cost of writing the synthetic set."""
    height, width = frame_hw3.shape[:2]
    ys, xs = _pixel_coords(height, width)
    r = scene.radius_frac * min(width, height)
    for cx, cy in centers_xy:
        x0, x1 = max(0, math.floor(cx - r) - 1), min(width, math.ceil(cx + r) + 2)
        y0, y1 = max(0, math.floor(cy - r) - 1), min(height, math.ceil(cy + r) + 2)
        if x0 >= x1 or y0 >= y1:  # this copy of the shape is entirely off the frame
            continue
        dx, dy = (xs[x0:x1] - cx)[None, :], (ys[y0:y1] - cy)[:, None]  # (1, w), (h, 1)
        if scene.shape == "circle":
            inside = dx * dx + dy * dy <= r * r
        elif scene.shape == "square":
            half = 0.85 * r  # about the circle's area, so size does not give the shape away
            inside = (np.abs(dx) <= half) & (np.abs(dy) <= half)
        else:  # triangle, apex up: half-width grows linearly from the apex to the base
            inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
        box_hw3 = frame_hw3[y0:y1, x0:x1]
        # a channel at a time: 8x faster than box_hw3[inside] = rgb, the same pixels
        for channel, value in enumerate(COLORS[scene.color]):
            box_hw3[..., channel][inside] = value


def _shape_centers(spec: VideoSpec, t_s: float) -> list[tuple[float, float]]:
    """Shape centre(s) at time t: constant-speed motion on a torus -- what leaves one edge
    re-enters at the opposite one -- so the direction named in the caption holds for every
    clip of a long video and the shape is always fully visible (possibly split in two)."""
    w, h = spec.width, spec.height
    dx, dy = DIRECTIONS[spec.scene.direction]
    x = (spec.start_frac[0] * w + dx * spec.speed_frac * w * t_s) % w
    y = (spec.start_frac[1] * h + dy * spec.speed_frac * h * t_s) % h
    if dx:
        return [(x - w, y), (x, y), (x + w, y)]
    return [(x, y - h), (x, y), (x, y + h)]


def frame_times(spec: VideoSpec) -> np.ndarray:
    """Presentation times (s) of the frames; jittered per frame for VFR videos."""
    n = max(2, round(spec.duration_s * spec.fps))
    nominal = np.arange(n, dtype=np.float64) / spec.fps
    if not spec.variable_frame_rate:
        return nominal
    rng = np.random.default_rng(zlib.crc32(spec.key.encode()))
    steps = (1.0 / spec.fps) * rng.uniform(0.5, 1.5, size=n - 1)
    return np.concatenate([[0.0], np.cumsum(steps)])


def render_video(spec: VideoSpec) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, H, W, 3) uint8 and their times (T,) in seconds."""
    times = frame_times(spec)
    frames = np.empty((len(times), spec.height, spec.width, 3), dtype=np.uint8)
    frames[:] = _plain_frame(spec.height, spec.width, spec.scene.background)  # whole frames copied
    for frame, t in zip(frames, times, strict=True):
        _draw_shape(frame, spec.scene, _shape_centers(spec, t))
    return frames, times


def encode_synthetic_video(spec: VideoSpec) -> bytes:
    """The video file a spec describes (what a player shows is ``render_video(spec)``)."""
    frames, times = render_video(spec)
    if spec.display_rotation:
        # store the frames turned clockwise; the display matrix turns them back
        frames = np.ascontiguousarray(np.rot90(frames, k=-spec.display_rotation // 90, axes=(1, 2)))
    return encode_video(
        frames,
        spec.fps,
        spec.codec,
        timestamps_s=times if spec.variable_frame_rate else None,
        display_rotation=spec.display_rotation,
    )


def _random_scene(rng: np.random.Generator, moving: bool) -> Scene:
    color, background = rng.choice(list(COLORS), size=2, replace=False)
    return Scene(
        shape=str(rng.choice(SHAPES)),
        color=str(color),
        background=str(background),
        direction=str(rng.choice(list(DIRECTIONS))) if moving else None,
        # Large enough that the tiny random-init demo tokenizer keeps the shape's colour in
        # its features (at 0.14-0.2 a linear probe on them reads it no better than chance).
        radius_frac=float(rng.uniform(0.22, 0.28)),
    )


def sample_video_spec(seed: int, split: str, index: int) -> VideoSpec:
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    scene = _random_scene(rng, moving=True)
    codec = CODEC_CYCLE[index % len(CODEC_CYCLE)]
    width, height = VIDEO_SIZES[rng.integers(len(VIDEO_SIZES))]
    fps = int(rng.choice(FRAME_RATES))
    # Mostly short clips, some long ones (up to 20 s) to exercise multi-clip sampling.
    duration = float(rng.uniform(1.0, 6.0) if rng.random() < 0.75 else rng.uniform(6.0, 20.0))
    if codec == "gif":  # gif stores full-ish frames: keep them short and small
        width, height, fps, duration = 160, 160, min(fps, 12), min(duration, 3.0)
    return VideoSpec(
        key=f"{split}-vid-{index:06d}",
        scene=scene,
        width=width,
        height=height,
        fps=fps,
        duration_s=round(duration, 2),
        codec=codec,
        variable_frame_rate=codec == "h264" and index % VFR_EVERY == VFR_EVERY - 1,
        display_rotation=90 if codec == "h264" and index % ROTATED_EVERY == ROTATED_EVERY - 1 else 0,
        speed_frac=float(rng.uniform(0.15, 0.3)),
        # Across the motion the centre stays > 0.28 of the frame from the edges: the shape
        # never touches them there, so frames where it is whole always exist.
        start_frac=(float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))),
    )


def _encode_image(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=92)
    return buf.getvalue()


def make_image(seed: int, index: int) -> tuple[str, Scene, bytes, str, tuple[int, int]]:
    rng = np.random.default_rng([seed, _SPLIT_CODE["image"], index])
    scene = _random_scene(rng, moving=False)
    width, height = IMAGE_SIZES[rng.integers(len(IMAGE_SIZES))]
    center = (float(rng.uniform(0.3, 0.7)) * width, float(rng.uniform(0.3, 0.7)) * height)
    fmt = "png" if index % 3 == 2 else "jpg"  # a third png, in any 3 consecutive images
    data = _encode_image(_draw_scene(scene, width, height, [center]), fmt)
    return f"img-{index:06d}", scene, data, fmt, (width, height)


# ------------------------------------------------------------------------ writing


@dataclass
class SyntheticCounts:
    train_videos: int = 48
    val_videos: int = 8
    images: int = 32
    samples_per_shard: int = 16


def _video_qa_line(spec: VideoSpec, rng: np.random.Generator) -> dict:
    pairs = spec.scene.qa_pairs()
    order = rng.permutation(len(pairs))[: int(rng.integers(1, 4))]
    chosen = [pairs[i] for i in order]
    path = f"videos/{spec.key}.{spec.extension}"
    if len(chosen) == 1:  # Video-LLaVA single-turn form, with its "<video>\n" marker
        return {"video": path, "question": "<video>\n" + chosen[0][0], "answer": chosen[0][1]}
    return {"video": path, "questions": [q for q, _ in chosen], "answers": [a for _, a in chosen]}


def _image_qa_line(key: str, fmt: str, scene: Scene, rng: np.random.Generator) -> dict:
    pairs = scene.qa_pairs()
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[: int(rng.integers(1, 4))]]
    path = f"images/{key}.{fmt}"
    if rng.random() < 0.5:
        return {"image": path, "questions": [q for q, _ in chosen], "answers": [a for _, a in chosen]}
    return {"image": path, "data": [x for pair in chosen for x in pair]}


def _shard_writer(folder: Path, samples_per_shard: int) -> wds.ShardWriter:
    folder.mkdir(parents=True, exist_ok=True)
    # mtime fixed so shards are byte-identical across runs with the same seed
    return wds.ShardWriter(str(folder / "shard-%05d.tar"), maxcount=samples_per_shard, verbose=0, mtime=0)


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line, sort_keys=True) + "\n" for line in lines))


def _write_vidtok_csv(path: Path, videos: list[str]) -> None:
    """VidTok's meta CSV: a header and one video path (relative to its DATA_DIR) per line."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["videos"])
        writer.writerows([video] for video in videos)


def write_synthetic_dataset(
    out_dir: str | Path,
    seed: int = 0,
    counts: SyntheticCounts | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int = 1,
) -> dict:
    """Write the whole synthetic set under ``out_dir``; returns the manifest.

    ``progress`` is called with the number of samples just written (for a progress bar).
    ``workers`` > 1 renders and encodes the media in that many processes; the files are
    the same bytes whatever the number (each sample is a pure function of its seed, and
    they are written in index order).
    """
    with _media_pool(workers) as pool:
        return _write_dataset(Path(out_dir), seed, counts or SyntheticCounts(), progress, pool)


@contextlib.contextmanager
def _media_pool(workers: int) -> Iterator[Callable]:
    """An ordered ``map`` over ``workers`` processes (the builtin ``map`` for one)."""
    if workers <= 1:
        yield map
        return
    # spawn: the parent may hold torch/OpenMP threads, which a fork would copy half-locked
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield functools.partial(pool.map, chunksize=4)


def _write_dataset(
    out: Path,
    seed: int,
    counts: SyntheticCounts,
    progress: Callable[[int], None] | None,
    pool_map: Callable,
) -> dict:
    tick = progress or (lambda n: None)
    caption_lines, video_qa_lines, image_qa_lines, val_qa_lines, val_caption_lines = [], [], [], [], []
    vidtok_rows: dict[str, list[str]] = {"train": [], "val": []}  # video paths under media/
    qa_rng = np.random.default_rng([seed, 99])
    totals = {"train_videos": 0, "val_videos": 0, "images": 0, "codecs": {}}

    for split, n_videos in (("train", counts.train_videos), ("val", counts.val_videos)):
        with _shard_writer(out / split / "videos", counts.samples_per_shard) as sink:
            specs = [sample_video_spec(seed, split, index) for index in range(n_videos)]
            encoded = pool_map(encode_synthetic_video, specs)  # lazily, in index order
            for index, (spec, data) in enumerate(zip(specs, encoded, strict=True)):
                meta = {
                    **asdict(spec),
                    "num_frames": len(frame_times(spec)),
                    "captions": spec.scene.captions(),
                }
                sink.write(
                    {
                        "__key__": spec.key,
                        spec.extension: data,
                        "txt": spec.scene.caption(0),
                        "json": json.dumps(meta),
                    }
                )
                totals[f"{split}_videos"] += 1
                totals["codecs"][spec.codec] = totals["codecs"].get(spec.codec, 0) + 1
                media = out / "media" / "videos" / f"{spec.key}.{spec.extension}"
                media.parent.mkdir(parents=True, exist_ok=True)
                media.write_bytes(data)
                vidtok_rows[split].append(f"videos/{media.name}")
                if split == "val":  # held-out evaluation: the question every model must answer
                    question, answer = spec.scene.qa_pairs()[0]
                    val_qa_lines.append(
                        {"video": f"videos/{media.name}", "question": question, "answer": answer}
                    )
                    # ... and the caption every generator is asked to draw (demo, t2v samples)
                    val_caption_lines.append(
                        {"video": f"videos/{media.name}", "caption": spec.scene.caption(0)}
                    )
                if split == "train":
                    caption = spec.scene.captions() if index % 3 == 0 else spec.scene.caption(0)
                    caption_lines.append({"video": f"videos/{media.name}", "caption": caption})
                    video_qa_lines.append(_video_qa_line(spec, qa_rng))
                tick(1)

    with _shard_writer(out / "train" / "images", counts.samples_per_shard) as sink:
        images = pool_map(make_image, itertools.repeat(seed, counts.images), range(counts.images))
        for key, scene, data, fmt, (width, height) in images:
            meta = {"key": key, "scene": asdict(scene), "width": width, "height": height, "format": fmt}
            sink.write({"__key__": key, fmt: data, "txt": scene.caption(0), "json": json.dumps(meta)})
            media = out / "media" / "images" / f"{key}.{fmt}"
            media.parent.mkdir(parents=True, exist_ok=True)
            media.write_bytes(data)
            image_qa_lines.append(_image_qa_line(key, fmt, scene, qa_rng))
            totals["images"] += 1
            tick(1)

    _write_jsonl(out / "annotations" / "video_caption.jsonl", caption_lines)
    _write_jsonl(out / "annotations" / "video_qa.jsonl", video_qa_lines)
    _write_jsonl(out / "annotations" / "image_qa.jsonl", image_qa_lines)
    _write_jsonl(out / "annotations" / "val_video_qa.jsonl", val_qa_lines)
    _write_jsonl(out / "annotations" / "val_video_caption.jsonl", val_caption_lines)
    for split, rows in vidtok_rows.items():
        _write_vidtok_csv(out / "annotations" / f"vidtok_{split}.csv", rows)
    manifest = {"generator": "divot_llm.data.synthetic", "version": 1, "seed": seed, **totals}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def total_samples(counts: SyntheticCounts) -> int:
    return counts.train_videos + counts.val_videos + counts.images


def dominant_motion(centroids_xy: np.ndarray, width: int, height: int) -> str | None:
    """Name the direction of a sequence of toroidal shape centroids (T, 2), or None when
    the shape does not move.

    Steps are wrapped into [-extent/2, extent/2) so crossing an edge counts as a small
    step, then summed into an unwrapped track. The direction is that of the median
    displacement between frames half the track apart, not of the median single step: a
    slow shape moves less than a (half-resolution) pixel between successive frames, its
    centroid then mostly stays put, and the median step is zero in both axes.
    """
    steps = np.diff(np.asarray(centroids_xy, dtype=np.float64), axis=0)
    extent = np.asarray([width, height], dtype=np.float64)
    steps = (steps + extent / 2) % extent - extent / 2
    track = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    lag = max(1, len(track) // 2)
    med = np.median(track[lag:] - track[:-lag], axis=0)
    if not med.any():
        return None
    if abs(med[0]) >= abs(med[1]):
        return "right" if med[0] > 0 else "left"
    return "down" if med[1] > 0 else "up"


def _circular_mean(coords: np.ndarray, extent: int) -> float:
    # The shape lives on a torus (it wraps around the edges), so average angles, not
    # coordinates: a shape split across an edge then still has its centroid inside it.
    angles = coords * (2 * math.pi / extent)
    mean = math.atan2(np.sin(angles).mean(), np.cos(angles).mean())
    return (mean * extent / (2 * math.pi)) % extent


def nearest_color(rgb: np.ndarray) -> str:
    names = list(COLORS)
    palette = np.asarray([COLORS[n] for n in names], dtype=np.float32)
    return names[int(np.argmin(np.linalg.norm(palette - np.asarray(rgb, dtype=np.float32), axis=1)))]


def classify_pixels(frame_hw3: np.ndarray) -> np.ndarray:
    """Index into ``COLORS`` of the nearest palette colour for every pixel (H, W)."""
    palette = np.asarray(list(COLORS.values()), dtype=np.float32)  # (K, 3)
    pixels = frame_hw3.reshape(-1, 3).astype(np.float32)  # (P, 3)
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2; |p|^2 is the same for every c, so drop it
    scores = pixels @ palette.T * -2.0 + (palette * palette).sum(1)
    return scores.argmin(1).reshape(frame_hw3.shape[:2])


def analyse_frame(frame_hw3: np.ndarray) -> dict:
    """Read a frame back: background colour (most common), shape colour (second), the shape
    mask's centroid and its bounding-box fill ratio (circle ~0.79, square 1, triangle 0.5)."""
    labels = classify_pixels(frame_hw3)
    names = list(COLORS)
    counts = np.bincount(labels.ravel(), minlength=len(names))
    order = np.argsort(counts)[::-1]
    bg, fg = order[0], order[1]
    mask = labels == fg
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:  # a single-colour frame: no shape to read
        return {"background": names[bg], "color": None, "centroid": None, "fill": None, "touches_edge": True}
    h, w = mask.shape
    touches_edge = xs.min() == 0 or ys.min() == 0 or xs.max() == w - 1 or ys.max() == h - 1
    # Percentile box: stray compression-artefact pixels of the shape colour elsewhere in
    # the frame must not inflate it.
    x0, x1 = np.percentile(xs, [1, 99])
    y0, y1 = np.percentile(ys, [1, 99])
    bbox_area = (x1 - x0 + 1) * (y1 - y0 + 1)
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    return {
        "background": names[bg],
        "color": names[fg],
        "centroid": (_circular_mean(xs, w), _circular_mean(ys, h)),
        "fill": float(min(1.0, inside.sum() / bbox_area)),
        "touches_edge": bool(touches_edge),
    }


def shape_from_fill(fill: float) -> str:
    return min(
        {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}.items(), key=lambda kv: abs(kv[1] - fill)
    )[0]


def read_scene_from_frames(frames_thw3: np.ndarray, max_frames: int = 48) -> dict:
    """Recover what a synthetic video shows from its decoded pixels alone: colours by
    majority over frames, direction from the toroidal centroid track, shape from the
    bounding-box fill of frames where the shape is not split across an edge.

    Reads at most ``max_frames`` evenly spaced frames at half resolution: enough for
    the colours and shape, and successive frames stay well under half a frame apart
    (the motion is at most 0.3 frame-widths per second, videos at most 20 s).
    """
    from collections import Counter

    picks = np.unique(
        np.linspace(0, len(frames_thw3) - 1, min(max_frames, len(frames_thw3))).round().astype(int)
    )
    small = frames_thw3[picks, ::2, ::2]
    height, width = small.shape[1:3]
    frames_read = [analyse_frame(f) for f in small]
    visible = [f for f in frames_read if f["color"] is not None]
    if not visible:
        return {"color": None, "background": frames_read[0]["background"], "direction": None, "shape": None}
    whole = [f["fill"] for f in visible if not f["touches_edge"]]
    direction = None
    if len(visible) >= 2:
        direction = dominant_motion(np.asarray([f["centroid"] for f in visible]), width, height)
    return {
        "color": Counter(f["color"] for f in visible).most_common(1)[0][0],
        "background": Counter(f["background"] for f in frames_read).most_common(1)[0][0],
        "direction": direction,
        "shape": shape_from_fill(float(np.median(whole))) if whole else None,
    }


def caption_colors(caption: str) -> tuple[str | None, str | None]:
    """(shape colour, background colour) a caption asks for, whatever its template: the
    colour right before a shape name, and the colour right before "background"."""
    colors = "|".join(COLORS)
    shape = re.search(rf"\b({colors}) (?:{'|'.join(SHAPES)})\b", caption.lower())
    background = re.search(rf"\b({colors}) background\b", caption.lower())
    return (shape.group(1) if shape else None, background.group(1) if background else None)


def named_color(text: str) -> str | None:
    """The first palette colour named in ``text`` (an answer or caption), or None."""
    found = re.search(r"\b(" + "|".join(COLORS) + r")\b", text.lower())
    return found.group(1) if found else None
