"""The exact floor of clip sampling: what any exact sampler must do for the clips chosen.

An oracle that knows the video's layout in advance (each frame's time, the packets in
decoding order, where the keyframes are: read once, outside the timing) and, for the
clips the reference rules choose, does only the unavoidable work:

    decode   from the keyframe before each run of groups of pictures holding a chosen
             frame up to the last chosen frame's packet, everything else of the stream
             never read; in that span every packet but the chosen frames' is sent with
             ``skip_frame=NONREF``, so only the frames some other frame references
             (I, P, referenced B) and the chosen frames themselves are decoded
    convert  only the chosen frames, to RGB as displayed (``video_codec.display_rgb``)
    deliver  the same (C, 5, 3, S, S) uint8 clips as the pipeline, through the same
             transform (each frame resized and cropped once, straight into its slot)

with the pipeline's decoder settings (``thread_type`` AUTO, ``thread_count`` 0: one thread
in a process pinned to one core). Its clips are bit-identical to the pipeline's
(tests/recipes/test_bench_data.py), so the difference between the two is the pipeline's
own overhead: probing, its seek policy, the margin around each target time it decodes
in full, picking frames by time.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass

import av
import numpy as np
import torch

from divot_llm.data.clip_sampling import clip_positions, plan_windows, probe_video, transform_into_clips
from divot_llm.data.video_codec import display_rgb


@dataclass(frozen=True)
class VideoLayout:
    """What the oracle knows before it starts: read from the file once, not timed."""

    num_frames: int  # as the pipeline's probe counts them (plan_windows' input)
    fps: float
    frame_times: np.ndarray  # seconds from the first frame, display order (sorted)
    frame_pts: np.ndarray  # the pts of each frame of ``frame_times``
    decode_position: dict[int, int]  # pts -> index of its packet in decoding order
    keyframe_positions: list[int]  # decoding-order indices of the keyframes, ascending
    keyframe_pts: list[int]


def video_layout(data: bytes) -> VideoLayout:
    """Demux the whole video once (no decoding) and note where everything is."""
    info = probe_video(data)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        origin = stream.start_time or 0
        packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.pts is not None]
        time_base = float(stream.time_base)
    pts_in_display_order = np.sort([pts for pts, _ in packets])
    keyframes = [(i, pts) for i, (pts, key) in enumerate(packets) if key]
    return VideoLayout(
        num_frames=info.num_frames,
        fps=info.fps,
        frame_times=(pts_in_display_order - origin) * time_base,
        frame_pts=pts_in_display_order,
        decode_position={pts: i for i, (pts, _) in enumerate(packets)},
        keyframe_positions=[i for i, _ in keyframes],
        keyframe_pts=[pts for _, pts in keyframes],
    )


def nearest_frames(frame_times: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Index of the frame on screen nearest each time, ties to the earlier frame (the
    pipeline's rule, ``clip_sampling._pick_frames``)."""
    after = np.clip(np.searchsorted(frame_times, times, side="left"), 1, len(frame_times) - 1)
    before = after - 1
    earlier_is_nearer = times - frame_times[before] <= frame_times[after] - times
    return np.where(earlier_is_nearer, before, after) if len(frame_times) > 1 else np.zeros_like(after)


@dataclass(frozen=True)
class DecodeRun:
    """Consecutive groups of pictures decoded in one pass: from a keyframe to the last
    chosen packet."""

    keyframe_pts: int
    first: int  # decoding-order index of the keyframe
    last: int  # decoding-order index of the last chosen packet


def decode_runs(layout: VideoLayout, chosen_pts: set[int]) -> list[DecodeRun]:
    """The passes the chosen frames need: a group of pictures with no chosen frame is
    never read, a run of neighbouring ones is read in one pass."""
    last_of_gop: dict[int, int] = {}
    for pts in chosen_pts:
        position = layout.decode_position[pts]
        gop = bisect.bisect_right(layout.keyframe_positions, position) - 1
        last_of_gop[gop] = max(last_of_gop.get(gop, -1), position)
    runs: list[DecodeRun] = []
    previous_gop = None
    for gop in sorted(last_of_gop):
        if previous_gop is not None and gop == previous_gop + 1:
            runs[-1] = DecodeRun(runs[-1].keyframe_pts, runs[-1].first, last_of_gop[gop])
        else:
            first = layout.keyframe_positions[gop]
            runs.append(DecodeRun(layout.keyframe_pts[gop], first, last_of_gop[gop]))
        previous_gop = gop
    return runs


def decode_chosen(data: bytes, layout: VideoLayout, chosen_pts: set[int]) -> dict[int, av.VideoFrame]:
    """The chosen frames by pts, decoding only what they need (see the module docstring)."""
    found: dict[int, av.VideoFrame] = {}
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # the pipeline's settings (clip_sampling._frames_at)
        stream.codec_context.thread_count = 0
        ctx = stream.codec_context
        for run in decode_runs(layout, chosen_pts):
            if run.first > 0:  # a fresh container starts at the first keyframe
                container.seek(run.keyframe_pts, stream=stream, backward=True)
            mode = None
            for offset, packet in enumerate(container.demux(stream)):
                if offset == 0 and packet.pts != run.keyframe_pts:
                    raise RuntimeError(f"seek to pts {run.keyframe_pts} landed at {packet.pts}")
                wanted = packet.pts in chosen_pts
                if mode != wanted:  # the decoder reads the setting per packet
                    ctx.skip_frame = "DEFAULT" if wanted else "NONREF"
                    mode = wanted
                found.update((f.pts, f) for f in ctx.decode(packet) if f.pts in chosen_pts)
                if run.first + offset == run.last:
                    break
            found.update((f.pts, f) for f in ctx.decode(None) if f.pts in chosen_pts)  # drain
    if len(found) != len(chosen_pts):
        raise RuntimeError(f"the oracle decoded {len(found)} of {len(chosen_pts)} chosen frames")
    return found


def exact_floor_clips(
    data: bytes,
    layout: VideoLayout,
    num_clips: int,
    rng: np.random.Generator,
    size: int = 256,
    kernel: str = "pil",
) -> torch.Tensor:
    """(C, 5, 3, S, S) uint8: the pipeline's clips (``sample_video_clips(as_uint8=True)``)
    for the same ``rng`` and resize ``kernel``, at the least cost of any exact sampler."""
    windows = plan_windows(layout.num_frames, layout.fps, num_clips, rng, dense=False)
    indices = windows[:, clip_positions()]  # (C, 5)
    unique = np.unique(indices)
    frame_of_target = nearest_frames(layout.frame_times, unique / layout.fps)
    target_pts = [int(layout.frame_pts[i]) for i in frame_of_target]
    frames = decode_chosen(data, layout, set(target_pts))
    pixels = [display_rgb(frames[pts]) for pts in target_pts]
    return torch.from_numpy(transform_into_clips(pixels, np.searchsorted(unique, indices), size, kernel))
