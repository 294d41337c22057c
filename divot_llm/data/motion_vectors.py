"""Video-LaVIT's motion-vector fields, extracted with PyAV alone (seed-systems.md b.1, b.1a).

Upstream re-encodes with an ffmpeg binary and reads the vectors with ``mv-extractor``; here
both steps run inside PyAV's bundled FFmpeg:

1. ``reencode_for_motion``: decode, resample to ``motion.fps`` with libavfilter's ``fps``
   filter (what ``ffmpeg -filter:v fps=6`` runs; display rotation applied first, as the
   ffmpeg command line does), encode MPEG-4 Part 2 (``mpeg4``) at ``motion.bitrate`` into a
   raw elementary stream in memory. Two choices differ from the ffmpeg command line on
   purpose: scene-change I-frames are off (``sc_threshold``; the source's keyframe flags
   are cleared, as the command line does), so an I-frame comes exactly every
   ``motion.gop`` frames and every GOP can start a clip; and the encoder runs on one
   thread, because the mpeg4 encoder splits a frame into one slice per thread and the
   vectors then depend on the machine's core count.
2. ``pooled_motion``: decode that stream with ``flags2=+export_mvs`` and reduce each frame's
   vectors, as it is decoded, to one value per ``block`` x ``block`` macroblock and axis:
   ``source * motion_xy / motion_scale``, divided by the frame width (x) or height (y),
   then by ``motion.std`` (over 10 with ``rescale``), scattered at ``dst_xy`` into a map
   filled with -10000, the map padded with -10000 to whole blocks and max-pooled, cells
   still below -1000 (no vector) set to 0. Only the pooled cells are kept: a 30-s 1080p
   video holds 180 x 2 x 68 x 120 floats, never its full-resolution maps.
3. ``clip_starts``: an I-frame starts a clip when the next I-frame is exactly ``gop``
   frames later with P-frames between, and ``2 * gop`` frames remain; of those, every
   ``clip_every``-th (the first alone when there are at most ``clip_every``, else starting
   at the ``clip_every``-th), then at most ``max_clips`` spread evenly.
4. ``clip_fields``: the clip's ``2 * gop`` pooled frames; frame ``gop`` (the second
   I-frame, which has no vectors) replaced by the mean of frames ``gop - 1`` and ``gop + 1``
   (upstream does this unconditionally); bicubic resize to ``height`` x ``width`` without
   antialiasing (upstream ran torchvision's tensor resize under torch 1.13, which did not
   antialias; newer torchvision defaults to antialias and changes fields by up to ~1.2).

Where upstream differs: with fewer than two qualifying I-frames it falls back to every
I-frame and pads clips that run past the end with empty frames, and it lets B-frames sit
between the two I-frames; here a clip is always whole and I, P..., I, and a video without
one raises ``MediaError("no_motion_clip")``. On our own streams (no B-frames, regular
GOPs) the two rules pick the same clips whenever at least two qualify; the fields then
equal upstream's exactly (``tools/lavit_motion_fixture.py``).
"""

from __future__ import annotations

import io
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F
from av.sidedata.sidedata import SideDataContainer

from divot_llm.config.schema import MotionFieldConfig
from divot_llm.data.errors import MediaError

NO_VECTOR = -10000.0  # upstream's fill of pixels that receive no vector
EMPTY_BELOW = -1000.0  # a pooled cell below this received no vector: it becomes 0
# libavfilter filters that show a frame stored with a counter-clockwise display rotation upright
_UPRIGHT = {90: [("transpose", "cclock")], 180: [("hflip", ""), ("vflip", "")], 270: [("transpose", "clock")]}
_FRAME_TYPE = {
    av.video.frame.PictureType.I: "I",
    av.video.frame.PictureType.P: "P",
    av.video.frame.PictureType.B: "B",
}


@dataclass(frozen=True)
class MotionClips:
    """A video's motion clips, as the tokenizer takes them."""

    fields: torch.Tensor  # (K, 2, clip_frames, height, width) float32; channel 0 = x, 1 = y
    start_frames: np.ndarray  # (K,) int64, index of each clip's I-frame in the re-encoded stream
    fps: float  # frame rate of the re-encoded stream
    num_frames: int  # frames in the re-encoded stream


@dataclass(frozen=True)
class PooledMotion:
    """Every frame of a re-encoded stream, pooled to macroblocks."""

    cells: np.ndarray  # (T, 2, ceil(h / block), ceil(w / block)) float32, 0 where no vector
    frame_types: np.ndarray  # (T,) "I" / "P" / "B" / "?"
    width: int  # frame size of the stream
    height: int


# --------------------------------------------------------------------- re-encode


def reencode_for_motion(
    media: bytes | str | os.PathLike, motion: MotionFieldConfig, threads: int = 0
) -> bytes:
    """The video as a raw MPEG-4 Part 2 stream at ``motion.fps`` / ``motion.bitrate`` with an
    I-frame every ``motion.gop`` frames. ``threads``: input decoder threads (0 = FFmpeg's
    choice); the encoder always runs on one. Raises ``MediaError("corrupt_video")``."""
    out = io.BytesIO()
    rate = Fraction(motion.fps).limit_denominator(1001)
    try:
        with _open(media) as container, av.open(out, "w", format="m4v") as writer:
            encoder = None
            for frame in _resampled(container, rate, threads):
                # the source's own keyframes must not force I-frames (the encoder honours a
                # frame's type; the ffmpeg command line clears it too)
                frame.pict_type = av.video.frame.PictureType.NONE
                if encoder is None:
                    encoder = _mpeg4_stream(writer, frame, rate, motion)
                writer.mux(encoder.encode(frame))
            if encoder is None:
                raise MediaError("corrupt_video", "no decodable video frame")
            writer.mux(encoder.encode())
    except av.error.FFmpegError as exc:
        raise MediaError("corrupt_video", f"{type(exc).__name__}: {exc}") from exc
    return out.getvalue()


def _open(media: bytes | str | os.PathLike) -> av.container.InputContainer:
    try:
        handle = io.BytesIO(media) if isinstance(media, (bytes, bytearray, memoryview)) else os.fspath(media)
        return av.open(handle)
    except FileNotFoundError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("corrupt_video", f"{type(exc).__name__}: {exc}") from exc


def _resampled(
    container: av.container.InputContainer, rate: Fraction, threads: int
) -> Iterator[av.VideoFrame]:
    """The first video stream's frames through ``fps=rate`` (upright, yuv420p)."""
    if not container.streams.video:
        raise MediaError("corrupt_video", "no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    graph = None
    for frame in container.decode(stream):
        if graph is None:  # built from the first frame: its size, format and rotation
            graph = _fps_graph(frame, stream.time_base or Fraction(1, 1000), rate)
        graph.push(frame)
        yield from _drain(graph)
    if graph is not None:
        graph.push(None)  # flush: the fps filter emits the frames due up to the end
        yield from _drain(graph)


def _fps_graph(first: av.VideoFrame, time_base: Fraction, rate: Fraction) -> av.filter.Graph:
    graph = av.filter.Graph()
    chain = [
        graph.add_buffer(width=first.width, height=first.height, format=first.format, time_base=time_base)
    ]
    for name, args in _UPRIGHT.get(int(first.rotation or 0) % 360, []):
        chain.append(graph.add(name, args))
    chain += [graph.add("fps", f"{rate.numerator}/{rate.denominator}"), graph.add("format", "yuv420p")]
    chain.append(graph.add("buffersink"))
    for left, right in itertools.pairwise(chain):
        left.link_to(right)
    graph.configure()
    return graph


def _drain(graph: av.filter.Graph) -> Iterator[av.VideoFrame]:
    while True:
        try:
            yield graph.pull()
        except (av.BlockingIOError, av.EOFError):
            return


def _mpeg4_stream(
    writer: av.container.OutputContainer, first: av.VideoFrame, rate: Fraction, motion: MotionFieldConfig
) -> av.video.stream.VideoStream:
    # no scene-change I-frames: the GOP stays regular
    stream = writer.add_stream("mpeg4", rate=rate, options={"sc_threshold": "1000000000"})
    stream.width, stream.height, stream.pix_fmt = first.width, first.height, "yuv420p"
    stream.bit_rate = motion.bitrate
    ctx = stream.codec_context
    ctx.time_base = 1 / rate
    ctx.gop_size = motion.gop
    ctx.thread_count = 1  # one slice: vectors independent of the core count
    return stream


# ------------------------------------------------------------------ vectors -> cells


def pooled_motion(stream: bytes, motion: MotionFieldConfig, threads: int = 0) -> PooledMotion:
    """Decode a ``reencode_for_motion`` stream with exported motion vectors and pool each
    frame's vectors to macroblocks as it is decoded. ``threads``: decoder threads."""
    cells, types = [], []
    std = np.asarray(motion.std, dtype=np.float64) / (10.0 if motion.rescale else 1.0)
    width = height = 0
    try:
        with av.open(io.BytesIO(stream), format="m4v") as container:
            video = container.streams.video[0]
            video.thread_type = "AUTO"
            video.codec_context.thread_count = threads
            video.codec_context.options = {"flags2": "+export_mvs"}
            for frame in container.decode(video):
                width, height = frame.width, frame.height
                types.append(_FRAME_TYPE.get(frame.pict_type, "?"))
                vectors = _frame_vectors(frame)
                cells.append(pool_frame_vectors(vectors, width, height, motion.block, std))
    except av.error.FFmpegError as exc:
        raise MediaError("corrupt_video", f"re-encoded stream: {type(exc).__name__}: {exc}") from exc
    if not cells:
        raise MediaError("corrupt_video", "the re-encoded stream has no frames")
    return PooledMotion(np.stack(cells), np.asarray(types), width, height)


def _frame_vectors(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's motion vectors (PyAV's structured array, copied out of the frame).

    Not through ``frame.side_data``: the frame caches that container, which refers back to
    the frame, and only a full garbage collection frees such a cycle -- a 30-s 1080p stream
    piled up ~450 MB of decoded frames before one ran. A container of our own is freed with
    the frame."""
    side = SideDataContainer(frame).get("MOTION_VECTORS")
    return side.to_ndarray().copy() if side is not None and len(side) else None


def pool_frame_vectors(
    vectors: np.ndarray | None, width: int, height: int, block: int, std: np.ndarray
) -> np.ndarray:
    """One frame's vectors (PyAV's structured array, read by field name) -> (2, Hb, Wb)."""
    rows, cols = math.ceil(height / block), math.ceil(width / block)
    cells = np.full((2, rows * cols), NO_VECTOR, dtype=np.float32)
    if vectors is not None:
        x = np.clip(vectors["dst_x"].astype(np.int64), 0, width - 1)
        y = np.clip(vectors["dst_y"].astype(np.int64), 0, height - 1)
        # several vectors aimed at one pixel: the map keeps the last one written
        _, last = np.unique((y * width + x)[::-1], return_index=True)
        keep = len(x) - 1 - last
        source = vectors["source"][keep].astype(np.float64)
        scale = vectors["motion_scale"][keep].astype(np.float64)
        # the recipe's order of operations, in float64, then float32 as upstream's clip tensor
        dx = source * vectors["motion_x"][keep] / scale / width / std[0]
        dy = source * vectors["motion_y"][keep] / scale / height / std[1]
        cell = (y[keep] // block) * cols + x[keep] // block
        np.maximum.at(cells[0], cell, dx.astype(np.float32))
        np.maximum.at(cells[1], cell, dy.astype(np.float32))
    cells[cells < EMPTY_BELOW] = 0.0
    return cells.reshape(2, rows, cols)


# ------------------------------------------------------------------------- clips


def clip_starts(frame_types: Sequence[str] | np.ndarray, motion: MotionFieldConfig) -> np.ndarray:
    """(K,) int64 frame indices of the clips upstream's rule selects (module docstring, 3)."""
    types = np.asarray(frame_types)
    gop, span = motion.gop, motion.clip_frames
    qualifying = np.asarray(
        [
            s
            for s in np.flatnonzero(types == "I")
            if s + span <= len(types) and types[s + gop] == "I" and (types[s + 1 : s + gop] == "P").all()
        ],
        dtype=np.int64,
    )
    every = motion.clip_every
    chosen = qualifying[:1] if len(qualifying) <= every else qualifying[every - 1 :: every]
    if len(chosen) > motion.max_clips:
        chosen = chosen[np.linspace(0, len(chosen) - 1, motion.max_clips, dtype=np.int64)]
    return chosen


def clip_fields(pooled: PooledMotion, starts: np.ndarray, motion: MotionFieldConfig) -> torch.Tensor:
    """(K, 2, clip_frames, height, width) float32 fields of the clips starting at ``starts``."""
    gop, span = motion.gop, motion.clip_frames
    index = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(span)
    clips_kf2hw = torch.from_numpy(pooled.cells[index])  # (K, F, 2, Hb, Wb)
    # frame gop is the second I-frame (no vectors): the mean of its neighbours
    clips_kf2hw[:, gop] = (clips_kf2hw[:, gop - 1] + clips_kf2hw[:, gop + 1]) / 2
    k, f, c, rows, cols = clips_kf2hw.shape
    resized = F.interpolate(
        clips_kf2hw.reshape(k * f, c, rows, cols),
        size=(motion.height, motion.width),
        mode="bicubic",
        align_corners=False,
        antialias=False,  # as torch 1.13's tensor resize, which upstream ran
    )
    return resized.reshape(k, f, c, motion.height, motion.width).permute(0, 2, 1, 3, 4).contiguous()


def stream_frames(
    stream: bytes, indices: np.ndarray | Sequence[int], max_width: int | None = None, threads: int = 0
) -> list[np.ndarray]:
    """RGB uint8 frames ``(h, w, 3)`` of a ``reencode_for_motion`` stream by frame index
    (``MotionClips.start_frames`` count in the same frames): a clip's keyframe is
    ``start_frames[k]``, its frames the ``clip_frames`` from there. Decodes forward and
    stops after the last index; ``max_width`` scales wider frames down (aspect kept).

    Raises:
        MediaError: ``corrupt_video`` when the stream is unreadable or shorter than an index.
    """
    order = [int(i) for i in indices]
    wanted = set(order)
    frames: dict[int, np.ndarray] = {}
    try:
        with av.open(io.BytesIO(stream), format="m4v") as container:
            video = container.streams.video[0]
            video.thread_type = "AUTO"
            video.codec_context.thread_count = threads
            for number, frame in enumerate(container.decode(video)):
                if number in wanted:
                    width = frame.width if max_width is None else min(max_width, frame.width)
                    height = max(1, round(frame.height * width / frame.width))
                    frames[number] = frame.to_ndarray(format="rgb24", width=width, height=height)
                if number >= max(wanted, default=-1):
                    break
    except av.error.FFmpegError as exc:
        raise MediaError("corrupt_video", f"re-encoded stream: {type(exc).__name__}: {exc}") from exc
    missing = wanted - frames.keys()
    if missing:
        raise MediaError("corrupt_video", f"the re-encoded stream has no frame {min(missing)}")
    return [frames[i] for i in order]


def motion_clips_from_stream(stream: bytes, motion: MotionFieldConfig, threads: int = 0) -> MotionClips:
    """``motion_clips`` of an already re-encoded stream (``reencode_for_motion``)."""
    pooled = pooled_motion(stream, motion, threads)
    starts = clip_starts(pooled.frame_types, motion)
    if len(starts) == 0:
        types = "".join(pooled.frame_types[:40]) + ("..." if len(pooled.frame_types) > 40 else "")
        raise MediaError(
            "no_motion_clip",
            f"{len(pooled.frame_types)} frames at {motion.fps:g} fps ({types}); a clip needs an I-frame, "
            f"{motion.gop - 1} P-frames, the next I-frame and {motion.clip_frames} frames in all",
        )
    return MotionClips(
        clip_fields(pooled, starts, motion), starts, float(motion.fps), len(pooled.frame_types)
    )


def motion_clips(
    media: bytes | str | os.PathLike, motion: MotionFieldConfig, threads: int = 0
) -> MotionClips:
    """A video's motion clips: re-encode, export the vectors, LaVIT's recipe (module
    docstring). Raises ``MediaError`` ``corrupt_video`` or ``no_motion_clip``."""
    return motion_clips_from_stream(reencode_for_motion(media, motion, threads), motion, threads)
