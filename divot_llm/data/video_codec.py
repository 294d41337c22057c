"""Encode and decode whole videos with PyAV (which bundles its own FFmpeg).

Encoding is byte-deterministic (``bitexact`` muxing, one encoder thread) so that a data
recipe run twice with the same seed writes identical shards.

``decode_video`` decodes every frame: it is for tools, tests and short clips. Training
decodes only the frames it samples (``data/clip_sampling.py``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np


@dataclass(frozen=True)
class VideoCodec:
    """An encoder + container pairing that FFmpeg (as bundled by PyAV) supports."""

    codec: str
    container: str
    extension: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)
    bit_rate: int | None = None  # for encoders without a constant-quality mode


VIDEO_CODECS: dict[str, VideoCodec] = {
    "h264": VideoCodec(
        "libx264", "mp4", "mp4", "yuv420p", {"preset": "veryfast", "crf": "23", "threads": "1"}
    ),
    "mpeg4": VideoCodec("mpeg4", "mp4", "mp4", "yuv420p", {"threads": "1"}, bit_rate=2_000_000),
    "vp9": VideoCodec(
        "libvpx-vp9", "webm", "webm", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "threads": "1"}
    ),
    # rgb8 is a fixed 3-3-2 palette: colours snap to it, so pick palette-friendly colours.
    "gif": VideoCodec("gif", "gif", "gif", "rgb8"),
}

_MS = Fraction(1, 1000)


def encode_video(
    frames_thwc: Sequence[np.ndarray] | np.ndarray,
    fps: float,
    codec: str = "h264",
    timestamps_s: Sequence[float] | None = None,
    display_rotation: int = 0,
    bit_rate: int | None = None,
) -> bytes:
    """Encode RGB uint8 frames (T, H, W, 3) into a video file's bytes.

    Args:
        frames_thwc: the frames; H and W must be even for the yuv420p codecs.
        fps: nominal frame rate written into the stream.
        codec: a key of ``VIDEO_CODECS``.
        timestamps_s: optional per-frame presentation times in seconds, strictly
            increasing, for variable-frame-rate videos (millisecond precision).
        display_rotation: counter-clockwise degrees (multiple of 90) a player must rotate
            the stored frames by, written as the container's display matrix (phones do
            this); mp4 only.
    """
    spec = VIDEO_CODECS[codec]
    height, width = frames_thwc[0].shape[:2]
    if spec.pix_fmt == "yuv420p" and (height % 2 or width % 2):
        raise ValueError(f"{codec} needs even frame sizes, got {width}x{height}")
    if timestamps_s is not None and len(timestamps_s) != len(frames_thwc):
        raise ValueError("timestamps_s must have one entry per frame")

    buf = io.BytesIO()
    with av.open(buf, "w", format=spec.container, options={"fflags": "+bitexact"}) as container:
        rate = Fraction(fps).limit_denominator(1001)
        options = dict(spec.options)
        if bit_rate:
            options.pop("crf", None)  # x264 takes crf over a bitrate
        stream = container.add_stream(spec.codec, rate=rate, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, spec.pix_fmt
        if bit_rate or spec.bit_rate:
            stream.bit_rate = bit_rate or spec.bit_rate
        if display_rotation:
            stream.set_display_rotation(display_rotation)
        if timestamps_s is not None:
            stream.codec_context.time_base = _MS
        for i, array in enumerate(frames_thwc):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            if timestamps_s is not None:
                frame.pts = round(timestamps_s[i] * 1000)
                frame.time_base = _MS
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buf.getvalue()


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    times_s: np.ndarray  # (T,) presentation time of each frame in seconds
    codec: str  # FFmpeg decoder name (h264, mpeg4, vp9, gif, ...)

    @property
    def duration_s(self) -> float:
        if len(self.times_s) < 2:
            return 0.0
        # last frame's start + one typical frame interval
        return float(self.times_s[-1] - self.times_s[0] + np.median(np.diff(self.times_s)))


def display_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as RGB uint8 (H, W, 3) the way a player shows it: the container's
    display rotation applied."""
    array = frame.to_ndarray(format="rgb24")
    rotation = int(frame.rotation or 0) % 360
    return np.ascontiguousarray(np.rot90(array, k=rotation // 90)) if rotation else array


def decode_video(source: bytes | str | os.PathLike) -> DecodedVideo:
    """Decode every frame of a video (bytes or a path) to RGB uint8, as displayed."""
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    with av.open(handle) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(display_rgb(frame))
            times.append(
                float(frame.time) if frame.time is not None else len(times) / float(stream.average_rate)
            )
        codec = stream.codec_context.name
    if not frames:
        raise ValueError("video has no decodable frames")
    return DecodedVideo(np.stack(frames), np.asarray(times, dtype=np.float64), codec)
