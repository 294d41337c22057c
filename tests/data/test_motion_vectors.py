"""Motion-vector fields with PyAV alone (divot_llm/data/motion_vectors.py): the re-encode's
GOP, frame types and bit rate; known motion read back with the right sign and magnitude;
the per-frame pooling against the full-resolution map of the recipe; clip selection; the
media errors."""

from __future__ import annotations

import dataclasses
import gc
import io

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from divot_llm.config.schema import MotionFieldConfig
from divot_llm.data.errors import MediaError
from divot_llm.data.motion_vectors import (
    NO_VECTOR,
    PooledMotion,
    clip_fields,
    clip_starts,
    motion_clips,
    motion_clips_from_stream,
    pool_frame_vectors,
    pooled_motion,
    reencode_for_motion,
)
from divot_llm.data.video_codec import encode_video
from tests.data.motion_media import SIDE, SIZE, START, moving_square
from tests.helpers import REPO_ROOT

MOTION = MotionFieldConfig()
STD = np.asarray(MOTION.std) / 10  # rescale=True: the tokenizer's input scale


def _frame_types(stream: bytes) -> str:
    with av.open(io.BytesIO(stream), format="m4v") as container:
        return "".join(
            av.video.frame.PictureType(frame.pict_type).name for frame in container.decode(video=0)
        )


def _covered_cells(dx: int, dy: int, t: int) -> tuple[slice, slice]:
    """Macroblocks inside the square in frames t - 1 and t: their content moved whole."""
    block = MOTION.block
    x0, y0 = START + dx * t, START + dy * t
    x1, y1 = START + dx * (t - 1) + SIDE, START + dy * (t - 1) + SIDE
    return slice(-(-y0 // block), y1 // block), slice(-(-x0 // block), x1 // block)


def test_reencode_puts_an_i_frame_exactly_every_gop_frames_through_a_scene_cut():
    rng = np.random.default_rng(1)
    width, height = SIZE
    # 5 s at 12 fps -> 30 frames at 6 fps; a hard cut in the middle would be a scene change
    frames = np.concatenate(
        [
            np.repeat(rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8), 34, axis=0),
            np.repeat(rng.integers(0, 256, (1, height, width, 3), dtype=np.uint8), 26, axis=0),
        ]
    )
    stream = reencode_for_motion(encode_video(frames, 12, "h264"), MOTION)
    assert _frame_types(stream) == ("I" + "P" * 11) * 2 + "I" + "P" * 5
    gop6 = dataclasses.replace(MOTION, gop=6)
    assert _frame_types(reencode_for_motion(encode_video(frames, 12, "h264"), gop6)) == ("I" + "P" * 5) * 5


def test_reencode_honours_the_bit_rate():
    noise = np.random.default_rng(0).integers(0, 256, (60, SIZE[1], SIZE[0], 3), dtype=np.uint8)
    video = encode_video(noise, 12, "h264")  # 5 s
    low = reencode_for_motion(video, dataclasses.replace(MOTION, bitrate=200_000))
    assert 0.75 < len(low) * 8 / 5 / 200_000 < 1.25
    assert len(reencode_for_motion(video, MOTION)) > 1.3 * len(low)  # 8 Mb/s: as fine as the encoder goes


@pytest.mark.parametrize(("dx", "dy"), [(2, 0), (0, 1)])
def test_known_motion_has_the_right_sign_and_magnitude(dx, dy):
    video = moving_square(dx, dy)  # 24 frames at 6 fps: exactly one clip
    pooled = pooled_motion(reencode_for_motion(video, MOTION), MOTION)
    width, height = SIZE
    expected = np.asarray([dx / width, dy / height]) / STD  # px/frame -> the recipe's units
    assert "".join(pooled.frame_types) == ("I" + "P" * 11) * 2
    for t in (*range(1, 12), *range(13, 24)):
        rows, cols = _covered_cells(dx, dy, t)
        for axis in (0, 1):
            cells = pooled.cells[t, axis, rows, cols]
            assert cells.size >= 1
            np.testing.assert_allclose(cells, expected[axis], rtol=1e-6, atol=1e-6)
    assert not pooled.cells[0].any() and not pooled.cells[12].any()  # I-frames carry no vectors

    clips = motion_clips(video, MOTION)
    assert clips.fields.shape == (1, 2, 24, 20, 36) and clips.fields.dtype == torch.float32
    assert clips.start_frames.tolist() == [0] and clips.num_frames == 24 and clips.fps == 6.0
    moving, still = (0, 1) if dx else (1, 0)
    field = clips.fields[0]
    # along the other axis: only the odd stray vector (a flat block at the square's edge
    # matched far away: the "noisy vectors" upstream users saw)
    assert (pooled.cells[:, still] != 0).mean() < 0.02
    for t in (5, 12, 17):  # 12: the I-frame, filled from frames 11 and 13
        along = field[moving, t]
        assert along.max() == pytest.approx(expected[moving], rel=0.3)  # bicubic over- and undershoots
        assert along.min() > -0.2 * expected[moving]
        # the square's part of the field, read through the same resize
        rows, cols = _covered_cells(dx, dy, t if t != 12 else 11)
        fy, fx = 20 / pooled.cells.shape[2], 36 / pooled.cells.shape[3]
        centre = along[int((rows.start + rows.stop) / 2 * fy), int((cols.start + cols.stop) / 2 * fx)]
        assert centre == pytest.approx(expected[moving], rel=0.15)


def test_a_static_video_has_no_motion():
    frames = np.repeat(np.random.default_rng(2).integers(0, 256, (1, 64, 96, 3), dtype=np.uint8), 24, axis=0)
    clips = motion_clips(encode_video(frames, 6, "h264"), MOTION)
    # synthetic stills give exact zeros; upstream saw ~5% small values on real static scenes
    assert clips.fields.shape[0] == 1 and not clips.fields.any()


def test_display_rotation_is_applied_before_the_vectors():
    # stored moving right, shown rotated 90 degrees counter-clockwise: moving up on screen
    pooled = pooled_motion(reencode_for_motion(moving_square(2, 0, display_rotation=90), MOTION), MOTION)
    assert (pooled.width, pooled.height) == (SIZE[1], SIZE[0])
    up = pooled.cells[:, 1][pooled.cells[:, 1] != 0]
    assert len(up) > 100 and np.median(up) == pytest.approx(-2 / SIZE[0] / STD[1])  # up: negative y
    assert (pooled.cells[:, 0] != 0).sum() < 0.05 * len(up)


def _vectors(rows: list[tuple]) -> np.ndarray:
    names = (
        "source",
        "w",
        "h",
        "src_x",
        "src_y",
        "dst_x",
        "dst_y",
        "flags",
        "motion_x",
        "motion_y",
        "motion_scale",
    )
    dtype = [
        (n, t)
        for n, t in zip(
            names, ("i4", "u1", "u1", "i2", "i2", "i2", "i2", "u8", "i4", "i4", "u2"), strict=True
        )
    ]
    return np.array(rows, dtype=dtype)


def test_pooling_each_frame_equals_the_full_resolution_map_of_the_recipe():
    """Scatter into an H x W map filled with -10000 (the last vector wins a pixel), pad,
    max-pool per axis, zero the empty cells: the per-frame pooling gives the same cells."""
    width, height, block = 40, 20, 16
    rng = np.random.default_rng(3)
    rows = [
        (int(rng.choice([-1, 1])), 16, 16, 0, 0, int(x), int(y), 0, int(mx), int(my), int(s))
        for x, y, mx, my, s in zip(
            rng.integers(-3, width + 3, 30),  # some past the edges: clipped, as upstream
            rng.integers(-3, height + 3, 30),
            rng.integers(-40, 40, 30),
            rng.integers(-40, 40, 30),
            rng.choice([2, 4], 30),
            strict=True,
        )
    ]
    rows += [(-1, 16, 16, 0, 0, 5, 5, 0, 8, 8, 2), (-1, 16, 16, 0, 0, 5, 5, 0, -90, -90, 2)]  # same pixel
    vectors = _vectors(rows)

    full = np.full((height, width, 2), NO_VECTOR)
    x = vectors["dst_x"].clip(0, width - 1)
    y = vectors["dst_y"].clip(0, height - 1)
    scaled = vectors["source"][:, None] * np.stack([vectors["motion_x"], vectors["motion_y"]], 1)
    scaled = scaled / vectors["motion_scale"][:, None] / np.asarray([width, height]) / STD
    for i in range(len(vectors)):  # in order: the last write of a pixel stays
        full[y[i], x[i]] = scaled[i]
    padded = F.pad(torch.from_numpy(full).permute(2, 0, 1).float(), (0, 8, 0, 12), value=NO_VECTOR)
    reference = F.max_pool2d(padded, block, block)
    reference[reference < -1000] = 0

    cells = pool_frame_vectors(vectors, width, height, block, STD)
    assert cells.shape == (2, 2, 3)
    torch.testing.assert_close(torch.from_numpy(cells), reference, rtol=0, atol=0)
    # the second vector at (5, 5), source -1 (from the past): +45 px each way
    assert cells[:, 0, 0].tolist() == pytest.approx([45 / width / STD[0], 45 / height / STD[1]])
    assert (pool_frame_vectors(None, width, height, block, STD) == 0).all()


def test_clip_fields_keep_each_frame_and_fill_frame_gop_with_its_neighbours_mean():
    rng = np.random.default_rng(4)
    cells = rng.normal(size=(30, 2, 20, 36)).astype(np.float32)  # already the field size
    pooled = PooledMotion(cells, np.asarray(list("IPPPPPPPPPPPIPPPPPPPPPPPIPPPPP")), 576, 320)
    fields = clip_fields(pooled, np.asarray([0, 3]), MOTION)
    assert fields.shape == (2, 2, 24, 20, 36)
    for k, start in enumerate((0, 3)):
        for f in (0, 11, 13, 23):  # bicubic at the same size: the cells as they are
            torch.testing.assert_close(fields[k, :, f], torch.from_numpy(cells[start + f]), rtol=0, atol=1e-6)
        mean = (cells[start + 11] + cells[start + 13]) / 2
        torch.testing.assert_close(fields[k, :, 12], torch.from_numpy(mean), rtol=0, atol=1e-6)


GOP = "I" + "P" * 11


@pytest.mark.parametrize(
    ("frames", "starts"),
    [
        (23, []),  # shorter than a clip
        (24, [0]),
        (35, [0]),  # I at 12 has 23 frames left
        (36, [0]),  # two qualify (0, 12): at most clip_every -> the first
        (48, [12]),  # 0, 12, 24 qualify: every second, from the second
        (60, [12, 36]),
        (180, [12, 36, 60, 84, 108, 132, 156]),  # 30 s at 6 fps: 14 qualify
    ],
)
def test_clip_starts_for_a_length(frames, starts):
    types = list((GOP * 40)[:frames])
    assert clip_starts(types, MOTION).tolist() == starts


def test_clip_starts_skip_broken_gops_and_spread_max_clips():
    broken = list(GOP * 2 + "IPPPPIPPPPPP" + GOP * 3)  # a short GOP at 24: no clip starts at 24 or 29
    qualifying = [0, 12, 36, 48]  # 24 is followed by an I after 5 frames; 60 has 12 frames left
    assert clip_starts(broken, MOTION).tolist() == qualifying[1::2]
    b_frames = list(GOP + "IPPBPPPPPPPP" + GOP * 2)  # a B-frame in the GOP at 12
    assert clip_starts(b_frames, MOTION).tolist() == [0]  # qualifying: 0 and 24 -> the first
    many = list(GOP * 100)  # 99 qualify, every second from the second: 49, then 8 spread evenly
    every_second = np.arange(12, 99 * 12, 24)
    expected = every_second[np.linspace(0, 48, 8).astype(int)]
    assert clip_starts(many, MOTION).tolist() == expected.tolist()
    assert clip_starts(many, dataclasses.replace(MOTION, clip_every=1, max_clips=200)).tolist() == list(
        range(0, 99 * 12, 12)
    )


def test_too_short_and_corrupt_videos_raise_media_errors():
    with pytest.raises(MediaError) as short:
        motion_clips(moving_square(1, 0, frames=20), MOTION)  # 20 frames at 6 fps
    assert short.value.reason == "no_motion_clip" and "20 frames" in short.value.detail
    with pytest.raises(MediaError) as noise:
        motion_clips(np.random.default_rng(5).bytes(4000), MOTION)
    assert noise.value.reason == "corrupt_video"
    video = moving_square(1, 0)
    with pytest.raises(MediaError) as cut:
        motion_clips(video[: len(video) // 3], MOTION)  # mp4 with its index cut off
    assert cut.value.reason == "corrupt_video"


def test_fields_equal_upstreams_recipe_on_the_same_stream():
    """tools/lavit_motion_fixture.py ran upstream's transform.py (its clip rule, scatter,
    pooling, frame-12 fill and resize) on one of our re-encoded streams: same fields, exactly."""
    fixture = np.load(REPO_ROOT / "tests" / "fixtures" / "lavit" / "motion_fields.npz")
    height, width = fixture["field_size"].tolist()
    clips = motion_clips_from_stream(
        fixture["stream"].tobytes(), dataclasses.replace(MOTION, height=height, width=width)
    )
    assert clips.start_frames.tolist() == [12, 36] and clips.num_frames == 60
    torch.testing.assert_close(clips.fields, torch.from_numpy(fixture["fields"]), rtol=0, atol=0)
    assert clips.fields.abs().max() > 1  # there is motion to compare


def test_decoded_frames_are_freed_without_the_garbage_collector():
    """Frames must go as soon as they are pooled: PyAV's cached ``frame.side_data`` forms a
    cycle with its frame, which only a full collection frees (a 30-s 1080p video piled up
    ~450 MB of frames)."""
    stream = reencode_for_motion(moving_square(1, 0), MOTION)
    gc.collect()
    gc.disable()
    try:
        pooled_motion(stream, MOTION)
        alive = sum(type(o) is av.VideoFrame for o in gc.get_objects())
    finally:
        gc.enable()
    assert alive == 0
