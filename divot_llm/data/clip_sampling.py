"""Clip sampling and frame decoding for training (divot-reference §7.3).

A clip is a 2-second window of 16 frames at 8 fps, reduced to 5 frames (positions 0, 4,
8, 12 and the last). Which windows a video yields follows the reference rules exactly
(``plan_windows``); decoding then reads only the frames those windows need: it seeks to
the keyframe before a far-away window, stops after the last needed frame, and converts
only the chosen frames to RGB. Frames are matched by presentation time, so variable
frame-rate videos sample the frame on screen at each instant.

Pixels follow the reference transform: PIL bilinear resize of the shorter side to 256,
centre crop 256, scaled to [-1, 1]. Display rotation metadata is applied first. The resize
has two kernels (``RESIZE_KERNELS``, config ``data.resize_kernel``): ``pil``, the
reference's, bit for bit; and ``torch``, the same antialiased bilinear filter in torch's
uint8 kernel, 3-6x faster per frame and within one level (of 255) of ``pil`` on every
pixel (about 1% of them differ), which is most of a comprehension sample's time after
decoding.
"""

from __future__ import annotations

import bisect
import io
import os
from dataclasses import dataclass

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from divot_llm.config.schema import RESIZE_KERNELS
from divot_llm.data.errors import MediaError
from divot_llm.data.images import open_rgb, to_rgb
from divot_llm.data.video_codec import display_rgb

WINDOW_FRAMES = 16  # frames per 2-s window at SAMPLE_FPS
SAMPLE_FPS = 8.0
STRIDE = 4  # keep every 4th window frame plus the last -> 5 frames per clip


# ----------------------------------------------------------------- index arithmetic


def decoder_threads() -> int:
    """Threads a video decoder may use here: one inside a dataloader worker (the workers
    already use the cores), else 0 (the decoder's choice)."""
    return 1 if torch.utils.data.get_worker_info() is not None else 0


def clip_positions(window: int = WINDOW_FRAMES, stride: int = STRIDE) -> np.ndarray:
    """Positions kept from a window: 0, stride, 2*stride, ... plus the last (0,4,8,12,15)."""
    return np.asarray([*range(0, window, stride), window - 1]) if stride else np.arange(window)


def plan_windows(
    num_frames: int,
    video_fps: float,
    num_clips: int,
    rng: np.random.Generator,
    dense: bool,
    window: int = WINDOW_FRAMES,
    sample_fps: float = SAMPLE_FPS,
) -> np.ndarray:
    """Frame indices of each clip's 16-frame window, shape (C, window), int.

    ``dense`` is the reference's QA rule: always exactly ``num_clips`` clips, one per
    equal segment, resampled more densely when a segment is shorter than 2 s. Otherwise
    (caption sources) long videos get ``num_clips`` segment clips the same way, and short
    ones consecutive 2-s windows from a random start (the last one compressed), so C can
    be smaller than ``num_clips``.
    """
    if num_frames < 1:
        raise MediaError("no_frames", "video has no frames")
    interval = video_fps / sample_fps  # source frames per sampled frame
    at_8fps = int(num_frames // interval)
    if dense or at_8fps >= num_clips * window:
        windows = _segment_windows(num_frames, interval, num_clips, rng, window)
        if windows.size == 0:  # fewer frames than clips: one clip over the whole video
            windows = np.linspace(0, num_frames - 1, window).astype(np.int64)[None]
    else:
        windows = _consecutive_windows(num_frames, interval, num_clips, rng, window)
    return np.clip(windows, 0, num_frames - 1)


def _segment_windows(num_frames: int, interval: float, num_clips: int, rng, window: int) -> np.ndarray:
    clip_len = num_frames // num_clips
    if clip_len == 0:
        return np.zeros((0, window), dtype=np.int64)
    # a segment too short for 2 s at 8 fps is stretched: 16 frames spread over it
    step = interval if clip_len >= window * interval else clip_len / window
    out = []
    for i in range(num_clips):
        low, high = i * clip_len, (i + 1) * clip_len - window * step
        start = rng.uniform(low, high) if high > low else float(low)
        out.append((start + step * np.arange(window)).astype(np.int64))
    return np.stack(out)


def _consecutive_windows(num_frames: int, interval: float, num_clips: int, rng, window: int) -> np.ndarray:
    span = window * interval
    start = rng.uniform(0, interval)
    out = []
    while start < num_frames and len(out) < num_clips:
        end = min(start + span, num_frames - 1)  # the reference's `len` end overflows by one; clamp
        out.append(np.linspace(start, end, window).astype(np.int64))
        start += span
    return np.stack(out)


# ------------------------------------------------------------------------ decoding


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    width: int  # as displayed (after rotation)
    height: int
    rotation: int  # counter-clockwise degrees to rotate stored frames for display


def _open(source: bytes | str | os.PathLike):
    try:
        handle = (
            io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
        )
        return av.open(handle)
    except FileNotFoundError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError("corrupt_video", str(exc)) from exc


def probe_container(container) -> VideoInfo:
    """Frame count, mean frame rate and coded size of an open container's first video
    stream, from its headers alone (no frame decoded; rotation not read: 0)."""
    if not container.streams.video:
        raise MediaError("no_video_stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    if not ctx.width or not ctx.height:  # e.g. a cut image read as a one-frame video
        raise MediaError("corrupt_video", "the stream has no frame size")
    duration_s = None
    if stream.duration is not None and stream.time_base is not None:
        duration_s = float(stream.duration * stream.time_base)
    elif container.duration:
        duration_s = container.duration / av.time_base
    rate = float(stream.average_rate) if stream.average_rate else None
    num_frames = stream.frames
    if not num_frames and duration_s and rate:
        num_frames = int(round(duration_s * rate))
    if num_frames and duration_s:
        fps = num_frames / duration_s  # the real mean rate: gif's nominal rate can be off
    elif rate:
        fps = rate
    else:
        raise MediaError("unknown_frame_rate")
    return VideoInfo(int(num_frames or 0), float(fps), ctx.width, ctx.height, rotation=0)


def probe_video(source: bytes | str | os.PathLike) -> VideoInfo:
    """Frame count, mean frame rate and displayed size, from the container headers (and
    the first frame's display matrix) without decoding the video."""
    with _open(source) as container:
        info = probe_container(container)
        try:
            first = next(container.decode(video=0))
        except (StopIteration, av.error.FFmpegError) as exc:
            raise MediaError("no_frames", str(exc)) from exc
        rotation = int(first.rotation or 0) % 360
    if rotation in (90, 270):
        return VideoInfo(info.num_frames, info.fps, info.height, info.width, rotation)
    return VideoInfo(info.num_frames, info.fps, info.width, info.height, rotation)


def read_frames_at(
    source: bytes | str | os.PathLike,
    times_s: np.ndarray,
    seek_gap_s: float = 2.0,
    threads: int = 0,
) -> list[np.ndarray]:
    """RGB uint8 frames (H, W, 3), as displayed, on screen at each time (seconds from the
    first frame). ``times_s`` must be non-decreasing.

    Decodes forward from the keyframe before the first time and seeks again when the
    next time is more than ``seek_gap_s`` ahead; stops after the last time. Frames far
    from every time that no other frame references are skipped undecoded; only the
    chosen frames are converted to RGB. ``threads``: decoder threads, 0 = FFmpeg's choice
    (about one per core: right for one process, oversubscribing with many workers).
    """
    times = np.asarray(times_s, dtype=np.float64)
    if len(times) == 0:
        return []
    if np.any(np.diff(times) < 0):
        raise ValueError("times_s must be non-decreasing")
    with _open(source) as container:
        return _frames_at(container, times, seek_gap_s, threads, source)


def _frames_at(
    container, times: np.ndarray, seek_gap_s: float, threads: int, source, skip: bool = True
) -> list[np.ndarray]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    stream.codec_context.thread_count = threads
    origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    rate = stream.average_rate or stream.guessed_rate
    # A target's nearest frame lies within half a frame of it at a constant rate; 0.75
    # frames leaves room for rounding and a mean rate that is slightly off.
    reach = 0.75 / float(rate) if skip and rate else 0.0
    try:
        picked = _pick_frames(container, stream, times, origin, seek_gap_s, reach)
    except _Unproven:
        # Rare (variable frame rate, times past the end): skipping may have hidden a frame
        # nearer to a time than the one picked. Decode again with nothing skipped.
        with _open(source) as fresh:
            return _frames_at(fresh, times, seek_gap_s, threads, source, skip=False)
    return [display_rgb(frame) for frame in picked]


class _Unproven(Exception):
    """A picked frame is farther from its time than ``reach`` while frames were skipped."""


class _PacketDecoder:
    """Decodes a stream packet by packet, skipping what cannot be picked.

    A packet whose presentation time is more than ``reach`` from every target is decoded
    with ``skip_frame=NONREF``: FFmpeg then drops it undecoded if no other frame
    references it (the non-reference B-frames, about half of an h264 stream) and decodes
    it as usual otherwise. Nothing else depends on a dropped frame, so every frame that
    comes out is bit-exact; the only risk is that a dropped frame was the nearest to a
    target, which ``_pick_frames`` rules out afterwards (``proves``). ``reach`` 0 skips
    nothing.
    """

    def __init__(self, container, stream, times: np.ndarray, origin: float, reach: float):
        self.container, self.stream, self.reach = container, stream, reach
        self.ctx = stream.codec_context
        self.time_base = float(stream.time_base)
        self.times, self.origin = times.tolist(), origin
        self.fed_skippable: set[int] = set()  # pts of packets sent with NONREF
        self.output: set[int] = set()  # pts of frames that came out

    def frames(self):
        """Frames from the container's current position (after a seek: the keyframe)."""
        mode = None
        for packet in self.container.demux(self.stream):
            skippable = self.reach > 0 and packet.pts is not None and self._far(packet.pts)
            if skippable:
                self.fed_skippable.add(packet.pts)
            if mode != skippable:  # the decoder reads the setting per packet
                self.ctx.skip_frame = "NONREF" if skippable else "DEFAULT"
                mode = skippable
            for frame in self.ctx.decode(packet):  # the last (empty) packet drains it
                if frame.pts is not None:
                    self.output.add(frame.pts)
                yield frame

    def _far(self, pts: int) -> bool:
        t = pts * self.time_base - self.origin
        j = bisect.bisect_left(self.times, t - self.reach)
        return j == len(self.times) or self.times[j] > t + self.reach

    def proves(self, times: np.ndarray, picked_t: np.ndarray) -> bool:
        """Whether the picks are those of a full decode. Every frame within ``reach`` of a
        target was decoded, so a pick within ``reach`` has no hidden nearer frame; a
        farther pick is only safe if nothing was dropped."""
        if not self.fed_skippable - self.output:
            return True
        return bool(np.all(np.abs(picked_t - times) < self.reach - 1e-9))


def _pick_frames(
    container, stream, times: np.ndarray, origin: float, seek_gap_s: float, reach: float = 0.0
) -> list:
    # A target takes the frame nearest to it in time (ties to the earlier one), which is
    # exact for constant-rate video and robust to coarse timestamps (gif: 1/100 s).
    picked: list = [None] * len(times)
    picked_t = np.zeros(len(times))
    i, previous, previous_t = 0, None, -np.inf
    decoder = _PacketDecoder(container, stream, times, origin, reach)
    frames = decoder.frames()
    can_seek, just_sought = True, False
    try:
        while i < len(times):
            if can_seek and times[i] - previous_t > seek_gap_s and times[i] > seek_gap_s:
                container.seek(int((times[i] + origin) / stream.time_base), stream=stream, backward=True)
                frames, previous, previous_t, just_sought = decoder.frames(), None, -np.inf, True
            for frame in frames:
                t = (frame.time if frame.time is not None else previous_t + 1e-6) - origin
                if just_sought and t < times[i] - seek_gap_s:
                    can_seek = False  # the format ignores seeks (e.g. gif): decode through
                just_sought = False
                while i < len(times) and times[i] < t:
                    closer_to_previous = previous is not None and times[i] - previous_t <= t - times[i]
                    picked[i], picked_t[i] = (previous, previous_t) if closer_to_previous else (frame, t)
                    i += 1
                previous, previous_t = frame, t
                if i >= len(times) or (can_seek and times[i] - previous_t > seek_gap_s):
                    break  # done, or the next target is far: seek instead of decoding on
            else:  # end of stream: the last frame stays on screen
                while i < len(times):
                    picked[i], picked_t[i] = previous, previous_t
                    i += 1
    except av.error.FFmpegError as exc:
        raise MediaError("corrupt_video", str(exc)) from exc
    if any(p is None for p in picked):
        raise MediaError("no_frames", "no frame decoded")
    if not decoder.proves(times, picked_t):
        raise _Unproven
    return picked


# ----------------------------------------------------------------------- transform


def to_model_pixels(
    frames_hw3: list[np.ndarray], size: int | tuple[int, int] = 256, kernel: str = "pil"
) -> torch.Tensor:
    """The reference image transform: PIL bilinear resize of the shorter side to ``size``,
    centre crop, [0, 255] -> [-1, 1]. Returns (F, 3, size, size) float32; a ``size`` of
    ``(height, width)`` gives (F, 3, height, width) frames (see ``_resize_crop_into``)."""
    return uint8_to_model_pixels(resized_uint8(frames_hw3, size, kernel))


def model_pixels_to_uint8(clip_fchw: torch.Tensor) -> np.ndarray:
    """The inverse of ``to_model_pixels`` for display: ``(F, 3, H, W)`` in [-1, 1] ->
    ``(F, H, W, 3)`` uint8 (clamped, as the reference writes its videos)."""
    frames = ((clip_fchw.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return frames.permute(0, 2, 3, 1).cpu().numpy()


def resized_uint8(
    frames_hw3: list[np.ndarray], size: int | tuple[int, int], kernel: str = "pil"
) -> torch.Tensor:
    """Resized and centre-cropped frames, (F, 3, H, W) uint8 (``size``: S for S x S, or
    (H, W)): a quarter of the float32 bytes to move when clips repeat frames."""
    check_resize_kernel(kernel)
    height, width = (size, size) if isinstance(size, int) else size
    out = np.empty((len(frames_hw3), 3, height, width), dtype=np.uint8)
    for i, array in enumerate(frames_hw3):
        _resize_crop_into(out[i], array, kernel)
    return torch.from_numpy(out)


def check_resize_kernel(kernel: str) -> None:
    if kernel not in RESIZE_KERNELS:
        raise ValueError(f"unknown resize kernel {kernel!r}: expected one of {', '.join(RESIZE_KERNELS)}")


def _resize_crop_into(out_3hw: np.ndarray, array_hw3: np.ndarray, kernel: str = "pil") -> None:
    """Write the reference transform of one RGB frame (h, w, 3), before scaling, into
    ``out_3hw`` (3, H, W) uint8: bilinear resize of the shorter side to S, centre crop --
    for a non-square (H, W), the smallest resize that covers it (the side whose ratio
    binds is resized to H or W), then the centre crop, so nothing is padded. ``kernel``:
    ``pil`` (the reference's, exact) or ``torch`` (within one level of it, faster)."""
    height, width = out_3hw.shape[-2:]
    h, w = array_hw3.shape[:2]
    if width * h >= height * w:  # width / w >= height / h: the width binds (S x S: w <= h)
        new_w, new_h = width, max(height, int(width * h / w))
    else:
        new_w, new_h = max(width, int(height * w / h)), height
    left, top = int(round((new_w - width) / 2.0)), int(round((new_h - height) / 2.0))
    crop = (left, top, left + width, top + height)
    if (new_w, new_h) == (w, h):
        # PIL's resize to the same size is a plain copy: crop the frame as it is
        # (the common case of a video whose shorter side is already S).
        cropped_hw3 = array_hw3[top : top + height, left : left + width]
    elif kernel == "torch":
        out_3hw[...] = _torch_resize(array_hw3, new_h, new_w)[:, top : top + height, left : left + width].numpy()
        return
    else:
        # contiguous first: PIL copies a strided array (decoded rows are padded) slowly
        image = Image.fromarray(np.ascontiguousarray(array_hw3))
        cropped_hw3 = np.asarray(image.resize((new_w, new_h), Image.BILINEAR).crop(crop))
    out_3hw[...] = cropped_hw3.transpose(2, 0, 1)


def _torch_resize(array_hw3: np.ndarray, new_h: int, new_w: int) -> torch.Tensor:
    """(3, new_h, new_w) uint8: torch's antialiased bilinear resize, PIL's filter (support
    scaled with the reduction, half-pixel centres) with its own fixed-point rounding. The
    frame goes in as it lies in memory (H, W, 3): the kernel's fast path reads channels
    last, decoded rows' padding included."""
    if not array_hw3.flags.writeable:  # a PIL image's array: torch wants memory it could write
        array_hw3 = array_hw3.copy()
    pixels_13hw = torch.from_numpy(array_hw3).permute(2, 0, 1).unsqueeze(0)
    return F.interpolate(pixels_13hw, (new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]


def uint8_to_model_pixels(pixels_uint8: torch.Tensor) -> torch.Tensor:
    """Resized pixels in [0, 255] (any shape, any device) -> float32 in [-1, 1] with the
    reference's arithmetic, float32(x) / 127.5 - 1. The training loader hands frames on as
    uint8 (a quarter of the bytes through worker queues and host memory) and the trainer
    converts them here on the accelerator."""
    if pixels_uint8.dtype != torch.uint8:  # also keeps the in-place ops off a caller's tensor
        raise TypeError(f"expected uint8 pixels in [0, 255], got {pixels_uint8.dtype}")
    return pixels_uint8.to(torch.float32).div_(127.5).sub_(1.0)


# -------------------------------------------------------------------- public entry


def check_media_size(width: int, height: int, min_resolution: int, min_aspect_ratio: float) -> None:
    """A source's size filters, the same for images and videos (either orientation: the
    shorter side and the aspect ratio do not change with a display rotation).

    Raises:
        MediaError: ``too_small`` (shorter side under ``min_resolution``) or
            ``bad_aspect_ratio`` (shorter / longer side under ``min_aspect_ratio``).
    """
    short, long = sorted((width, height))
    if short < min_resolution:
        raise MediaError("too_small", f"{width}x{height} < {min_resolution}")
    if short / long < min_aspect_ratio:
        raise MediaError("bad_aspect_ratio", f"{width}x{height}")


def sample_video_clips(
    source: bytes | str | os.PathLike,
    num_clips: int,
    rng: np.random.Generator,
    dense: bool = False,
    image_size: int = 256,
    window: int = WINDOW_FRAMES,
    sample_fps: float = SAMPLE_FPS,
    stride: int = STRIDE,
    min_resolution: int = 0,
    min_aspect_ratio: float = 0.0,
    threads: int = 0,
    as_uint8: bool = False,
    resize_kernel: str = "pil",
) -> torch.Tensor:
    """Decode the clips a video yields under the reference rules.

    Returns (C, 5, 3, image_size, image_size) in [-1, 1] with 1 <= C <= num_clips, or with
    ``as_uint8`` the same pixels before ``uint8_to_model_pixels``, in [0, 255].
    ``resize_kernel``: ``RESIZE_KERNELS`` (``pil``: the reference's pixels exactly).
    Raises MediaError (with a ``reason``) for unusable videos: corrupt, no frames, too
    small, too elongated.
    """
    check_resize_kernel(resize_kernel)  # before any decoding
    # One open for headers and frames. The size filters need no display rotation: the
    # shorter side and the aspect ratio are the same either way round.
    with _open(source) as container:
        info = probe_container(container)
        check_media_size(info.width, info.height, min_resolution, min_aspect_ratio)
        windows = plan_windows(info.num_frames, info.fps, num_clips, rng, dense, window, sample_fps)
        indices = windows[:, clip_positions(window, stride)]  # (C, 5)
        unique = np.unique(indices)
        frames = _frames_at(container, unique / info.fps, 2.0, threads, source)
    clips_uint8 = torch.from_numpy(
        transform_into_clips(frames, np.searchsorted(unique, indices), image_size, resize_kernel)
    )
    return clips_uint8 if as_uint8 else uint8_to_model_pixels(clips_uint8)


def transform_into_clips(
    frames_hw3: list[np.ndarray], frame_of_slot: np.ndarray, size: int, kernel: str = "pil"
) -> np.ndarray:
    """(C, 5, 3, S, S) uint8 clips, slot (c, k) holding ``frames_hw3[frame_of_slot[c, k]]``
    transformed. Each frame is transformed once, straight into its first slot, and copied
    to the slots that repeat it (neighbouring clips can share a frame)."""
    clips = np.empty((*frame_of_slot.shape, 3, size, size), dtype=np.uint8)
    slots = clips.reshape(-1, 3, size, size)  # a view: writing a slot writes `clips`
    first_slot: dict[int, int] = {}
    for slot, frame in enumerate(frame_of_slot.ravel().tolist()):
        if frame in first_slot:
            slots[slot] = slots[first_slot[frame]]
        else:
            _resize_crop_into(slots[slot], frames_hw3[frame], kernel)
            first_slot[frame] = slot
    return clips


def image_clip(
    image: Image.Image | bytes | str | os.PathLike,
    frames_per_clip: int = 5,
    image_size: int | tuple[int, int] = 256,
    as_uint8: bool = False,
    min_resolution: int = 0,
    min_aspect_ratio: float = 0.0,
    resize_kernel: str = "pil",
) -> torch.Tensor:
    """A still image (opened, or a file's bytes or path) as one static clip:
    (1, frames_per_clip, 3, S, S) in [-1, 1] (or, with ``as_uint8``, in [0, 255] as
    ``sample_video_clips``); an ``image_size`` of (H, W) gives H x W frames. Any PIL mode is made 8-bit RGB by ``images.to_rgb`` (16-bit
    greyscale scaled, transparency over white).

    Raises:
        MediaError: unusable image: corrupt, too small, too elongated (``check_media_size``).
    """
    rgb = to_rgb(image) if isinstance(image, Image.Image) else open_rgb(image)
    check_media_size(*rgb.size, min_resolution, min_aspect_ratio)
    pixels = resized_uint8([np.asarray(rgb)], image_size, resize_kernel)  # (1, 3, H, W)
    clip_uint8 = pixels.expand(frames_per_clip, -1, -1, -1).unsqueeze(0).clone()
    return clip_uint8 if as_uint8 else uint8_to_model_pixels(clip_uint8)
