"""Clip sampling (reference index rules) and partial decoding (exact frames)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch
from PIL import Image

from divot_llm.data.clip_sampling import (
    MediaError,
    _PacketDecoder,
    _pick_frames,
    _Unproven,
    check_media_size,
    clip_positions,
    image_clip,
    plan_windows,
    probe_video,
    read_frames_at,
    sample_video_clips,
    to_model_pixels,
    uint8_to_model_pixels,
)
from divot_llm.data.video_codec import decode_video, encode_video


def _indexed_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frames whose colour encodes their index (robust to lossy coding)."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        frames[i, :, :, 0] = (i * 37) % 256
        frames[i, :, :, 1] = (i * 11) % 256
        frames[i, :, : w // 2, 2] = 255
    return frames


# ------------------------------------------------------------- index arithmetic


def test_clip_positions_are_0_4_8_12_and_last():
    assert clip_positions().tolist() == [0, 4, 8, 12, 15]


def test_segment_rule_for_long_videos():
    # 20 s at 30 fps, 4 clips: each 5-s segment holds 2 s at 8 fps -> interval 3.75 frames
    rng = np.random.default_rng(0)
    windows = plan_windows(600, 30.0, 4, rng, dense=False)
    assert windows.shape == (4, 16)
    for i, row in enumerate(windows):
        start = row[0]
        assert 150 * i <= start <= 150 * (i + 1) - 60
        expected = (start + 3.75 * np.arange(16)).astype(int)
        assert np.abs(row - expected).max() <= 1  # int() of the float start
        assert np.all(np.diff(row) >= 3) and np.all(np.diff(row) <= 4)


def test_dense_rule_stretches_short_segments():
    # QA: 4 s at 25 fps, 20 clips -> 5-frame segments, 16 indices spread densely over each
    windows = plan_windows(100, 25.0, 20, np.random.default_rng(0), dense=True)
    assert windows.shape == (20, 16)
    for i, row in enumerate(windows):
        assert row.tolist() == (5 * i + (5 / 16) * np.arange(16)).astype(int).tolist()


def test_caption_rule_for_short_videos_takes_consecutive_windows():
    # 8 s at 25 fps, up to 20 clips: too short for 20 clips -> consecutive 2-s windows
    windows = plan_windows(200, 25.0, 20, np.random.default_rng(1), dense=False)
    assert windows.shape == (4, 16)  # ceil((200 - start) / 50) windows, start < 3.125
    starts = windows[:, 0]
    assert 0 <= starts[0] < 3.125 + 1
    assert np.all(np.abs(np.diff(starts) - 50) <= 1)
    assert windows.max() <= 199  # the reference's end index overflows by one; we clamp


def test_fewer_frames_than_clips_falls_back_to_one_clip():
    windows = plan_windows(10, 25.0, 20, np.random.default_rng(0), dense=True)
    assert windows.tolist() == [np.linspace(0, 9, 16).astype(int).tolist()]


def test_windows_are_deterministic_and_in_range():
    for n, fps, clips, dense in [(7, 30.0, 1, False), (1000, 24.0, 20, False), (333, 12.0, 3, True)]:
        a = plan_windows(n, fps, clips, np.random.default_rng(5), dense)
        b = plan_windows(n, fps, clips, np.random.default_rng(5), dense)
        assert np.array_equal(a, b)
        assert a.min() >= 0 and a.max() <= n - 1 and 1 <= len(a) <= clips


# ------------------------------------------------------------------- decoding


@pytest.mark.parametrize("codec", ["h264", "mpeg4", "vp9", "gif"])
@pytest.mark.parametrize("fps", [8, 25])
def test_sampled_frames_are_exactly_the_planned_frames(codec, fps):
    # compared with decoding every frame, so skipping non-reference frames changes nothing
    frames = _indexed_frames(150, 48, 48 if codec == "gif" else 64)
    video = encode_video(frames, fps, codec)
    info = probe_video(video)
    assert (info.num_frames, round(info.fps)) == (150, fps)
    full = decode_video(video).frames  # naive reference: every frame decoded
    for dense, clips in [(True, 3), (False, 20), (False, 1)]:
        windows = plan_windows(info.num_frames, info.fps, clips, np.random.default_rng(2), dense)
        wanted = np.unique(windows[:, clip_positions()])
        got = read_frames_at(video, wanted / info.fps)
        for index, frame in zip(wanted, got, strict=True):
            np.testing.assert_array_equal(frame, full[index])


def test_sample_video_clips_returns_model_pixels_of_the_planned_frames():
    frames = _indexed_frames(120)
    video = encode_video(frames, 24, "h264")
    clips = sample_video_clips(video, 3, np.random.default_rng(4), dense=True, image_size=32)
    assert clips.shape == (3, 5, 3, 32, 32) and clips.dtype == torch.float32
    assert clips.min() >= -1 and clips.max() <= 1
    windows = plan_windows(120, 24.0, 3, np.random.default_rng(4), dense=True)
    full = decode_video(video).frames
    expected = to_model_pixels([full[i] for i in windows[:, clip_positions()].ravel()], 32)
    torch.testing.assert_close(clips.reshape(15, 3, 32, 32), expected)
    # the loader's form: the same pixels as uint8, scaled later on the accelerator
    clips_uint8 = sample_video_clips(video, 3, np.random.default_rng(4), dense=True, image_size=32, as_uint8=True)
    assert clips_uint8.dtype == torch.uint8
    assert torch.equal(uint8_to_model_pixels(clips_uint8), clips)
    assert torch.equal(uint8_to_model_pixels(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
    with pytest.raises(TypeError, match="uint8"):
        uint8_to_model_pixels(clips)  # already scaled: refused, not scaled twice


def test_variable_frame_rate_picks_the_frame_nearest_each_time():
    frames = _indexed_frames(40)
    times = np.cumsum(np.r_[0, np.tile([0.05, 0.15], 20)[:39]])  # 20 fps and ~6.7 fps alternating
    video = encode_video(frames, 10, "h264", timestamps_s=times)
    decoded = decode_video(video)
    np.testing.assert_allclose(decoded.times_s, times, atol=1e-3)
    targets = np.array([0.0, 0.06, 0.19, 0.5, 1.21, times[-1] + 5])
    got = read_frames_at(video, targets)
    for target, frame in zip(targets, got, strict=True):
        nearest = int(np.argmin(np.abs(times - target)))
        np.testing.assert_array_equal(frame, decoded.frames[nearest])


def test_far_apart_times_seek_and_still_get_exact_frames():
    frames = _indexed_frames(600, 32, 32)  # 25 s at 24 fps, keyframes ~every 10 s by default
    video = encode_video(frames, 24, "h264")
    full = decode_video(video).frames
    wanted = np.array([3, 250, 251, 590])
    for index, frame in zip(wanted, read_frames_at(video, wanted / 24.0, seek_gap_s=1.0), strict=True):
        np.testing.assert_array_equal(frame, full[index])


def test_non_reference_frames_far_from_every_time_are_not_decoded():
    video = encode_video(_indexed_frames(150), 25, "h264")  # libx264: B-frames, half unreferenced
    full = decode_video(video).frames
    wanted = np.array([7, 30, 31, 77, 149])
    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        decoder = _PacketDecoder(container, stream, wanted / 25.0, origin=0.0, reach=0.75 / 25)
        decoded = [frame.pts for frame in decoder.frames()]
    assert len(decoded) < 120 and len(decoder.fed_skippable) > 130  # most frames dropped undecoded
    assert set(wanted * 512) <= set(decoded)  # mp4 time base 1/12800: 512 ticks per frame
    for index, frame in zip(wanted, read_frames_at(video, wanted / 25.0), strict=True):
        np.testing.assert_array_equal(frame, full[index])


def test_a_pick_skipping_cannot_prove_is_decoded_again_without_skipping():
    # past the end the last frame is picked, far from the time: a dropped frame could have
    # been nearer, so the read is redone with every frame decoded
    video = encode_video(_indexed_frames(150), 25, "h264")
    full = decode_video(video).frames
    times = np.array([0.2, 9.0])
    with av.open(io.BytesIO(video)) as container, pytest.raises(_Unproven):
        _pick_frames(container, container.streams.video[0], times, 0.0, 2.0, reach=0.75 / 25)
    got = read_frames_at(video, times)
    np.testing.assert_array_equal(got[0], full[5])
    np.testing.assert_array_equal(got[1], full[-1])


def test_rotation_metadata_is_applied():
    upright = _indexed_frames(16, 32, 64)  # landscape as displayed
    stored = np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2)))  # phone-style: stored sideways
    video = encode_video(stored, 8, "h264", display_rotation=90)
    info = probe_video(video)
    assert (info.width, info.height, info.rotation) == (64, 32, 90)
    frame = read_frames_at(video, [0.0])[0]
    assert frame.shape == (32, 64, 3)
    assert frame[:, :32, 2].mean() > 200 and frame[:, 32:, 2].mean() < 50  # blue half on the left


def test_reference_transform_resizes_shorter_side_and_centre_crops():
    image = np.zeros((200, 400, 3), np.uint8)
    image[:, :200] = (255, 0, 0)
    image[:, 200:] = (0, 0, 255)
    pixels = to_model_pixels([image], 256)  # 400x200 -> 512x256 -> centre 256x256
    strided = np.zeros((200, 410, 3), np.uint8)[:, :400]  # padded rows, as decoded frames have
    strided[:] = image
    assert torch.equal(to_model_pixels([strided], 256), pixels)
    assert pixels.shape == (1, 3, 256, 256)
    assert torch.allclose(pixels[0, :, :, :120], torch.tensor([1.0, -1.0, -1.0])[:, None, None])
    assert torch.allclose(pixels[0, :, :, 136:], torch.tensor([-1.0, -1.0, 1.0])[:, None, None])


def test_a_non_square_clip_size_covers_it_and_centre_crops():
    """(H, W) clips (VidTok's input_height x input_width): the smallest resize that covers
    H x W, then the centre crop -- a square frame fills a wide clip, nothing is padded."""
    image = np.zeros((40, 80, 3), np.uint8)
    image[:, :40] = (255, 0, 0)
    image[:, 40:] = (0, 0, 255)
    red, blue = torch.tensor([1.0, -1.0, -1.0])[:, None, None], torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    wide = to_model_pixels([image], (10, 40))[0]  # 80x40 -> 40x20 -> rows 5..15, every column
    assert wide.shape == (3, 10, 40)
    assert torch.allclose(wide[:, :, :18], red) and torch.allclose(wide[:, :, 22:], blue)
    tall = to_model_pixels([image], (20, 10))[0]  # 80x40 -> 40x20 -> columns 15..25
    assert tall.shape == (3, 20, 10)
    assert torch.allclose(tall[:, :, :4], red) and torch.allclose(tall[:, :, 6:], blue)
    square = np.full((32, 32, 3), 200, np.uint8)
    assert torch.equal(to_model_pixels([square], (16, 32)), torch.full((1, 3, 16, 32), 200 / 127.5 - 1))


@pytest.mark.parametrize(
    "height, width",
    [(64, 114), (64, 64), (114, 64), (64, 97), (120, 214), (121, 77), (48, 200), (90, 60)],
)
def test_transform_equals_pil_resize_then_centre_crop(height, width):
    # the reference (torchvision Resize(S) + CenterCrop(S) on a PIL image) written out with
    # PIL alone; sizes whose shorter side is already S take the no-resize path
    size = 64
    frame = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if width <= height:
        resized = (size, int(size * height / width))
    else:
        resized = (int(size * width / height), size)
    left, top = round((resized[0] - size) / 2.0), round((resized[1] - size) / 2.0)
    image = Image.fromarray(frame).resize(resized, Image.BILINEAR)
    expected = np.asarray(image)[top : top + size, left : left + size].transpose(2, 0, 1)
    pixels = to_model_pixels([frame], size)
    assert torch.equal(pixels[0], torch.tensor(expected).float() / 127.5 - 1)
    # the clip path writes the same pixels straight into every slot that shows the frame
    even = frame[: height // 2 * 2, : width // 2 * 2]  # h264 wants even sizes
    video = encode_video(np.stack([even] * 8), 8, "h264")
    clips = sample_video_clips(video, 1, np.random.default_rng(0), image_size=size, as_uint8=True)
    picked = plan_windows(8, 8.0, 1, np.random.default_rng(0), dense=False)[0, clip_positions()]
    expected_clip = to_model_pixels(list(decode_video(video).frames[picked]), size)
    assert torch.equal(uint8_to_model_pixels(clips[0]), expected_clip)


def test_the_torch_kernel_is_within_one_level_of_pil_on_clips_and_images():
    # a textured video (downscaled 1.7x: the filter spans several source pixels) and a
    # portrait image that is upscaled; unknown kernels are refused before any decoding
    rng = np.random.default_rng(5)
    frames = np.kron(rng.integers(0, 256, (8, 54, 96, 3), dtype=np.uint8), np.ones((1, 2, 2, 1), np.uint8))
    video = encode_video(frames, 8, "h264")  # (8, 108, 192, 3)
    clips = {
        kernel: sample_video_clips(video, 1, np.random.default_rng(0), image_size=64, as_uint8=True, resize_kernel=kernel)
        for kernel in ("pil", "torch")
    }
    difference = (clips["pil"].int() - clips["torch"].int()).abs()
    assert difference.max() == 1 and 0 < (difference > 0).float().mean() < 0.1  # not the same code path
    image = Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8))
    still = {kernel: image_clip(image, 5, 64, as_uint8=True, resize_kernel=kernel) for kernel in ("pil", "torch")}
    assert (still["pil"].int() - still["torch"].int()).abs().max() <= 1
    with pytest.raises(ValueError, match="unknown resize kernel 'cv2'"):
        sample_video_clips(b"not even a video", 1, np.random.default_rng(0), resize_kernel="cv2")


def test_image_becomes_a_static_clip():
    image = Image.fromarray(_indexed_frames(1, 80, 120)[0])
    clip = image_clip(image, frames_per_clip=5, image_size=64)
    assert clip.shape == (1, 5, 3, 64, 64)
    assert all(torch.equal(clip[0, 0], clip[0, k]) for k in range(5))
    assert torch.equal(uint8_to_model_pixels(image_clip(image, 5, 64, as_uint8=True)), clip)


def test_unusable_media_raise_media_error_with_a_reason():
    video = encode_video(_indexed_frames(16), 8, "h264")
    cases = [
        (lambda: sample_video_clips(video[: len(video) // 2], 1, np.random.default_rng(0)), "corrupt_video"),
        (lambda: sample_video_clips(b"not a video", 1, np.random.default_rng(0)), "corrupt_video"),
        (lambda: sample_video_clips(video, 1, np.random.default_rng(0), min_resolution=100), "too_small"),
        (
            lambda: sample_video_clips(video, 1, np.random.default_rng(0), min_aspect_ratio=0.9),
            "bad_aspect_ratio",
        ),
        (lambda: image_clip(b"\x89PNG broken"), "corrupt_image"),
        (lambda: image_clip(_jpeg_head(full=True), min_resolution=65), "too_small"),  # 64 x 48
        (lambda: image_clip(_jpeg_head(full=True), min_aspect_ratio=0.8), "bad_aspect_ratio"),
        # the first bytes of a JPEG named .mp4: FFmpeg opens it as a stream without a size
        (lambda: sample_video_clips(_jpeg_head(), 1, np.random.default_rng(0)), "corrupt_video"),
    ]
    for call, reason in cases:
        with pytest.raises(MediaError) as err:
            call()
        assert err.value.reason == reason


def _jpeg_head(full: bool = False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_indexed_frames(1, 48 if full else 64, 64)[0]).save(buf, "JPEG")
    return buf.getvalue() if full else buf.getvalue()[:64]


def test_size_filters_take_the_shorter_side_in_either_orientation():
    for width, height in ((200, 100), (100, 200)):
        check_media_size(width, height, min_resolution=100, min_aspect_ratio=0.5)  # exactly at both limits
        with pytest.raises(MediaError, match=f"{width}x{height} < 101") as err:
            check_media_size(width, height, min_resolution=101, min_aspect_ratio=0.0)
        assert err.value.reason == "too_small"
        with pytest.raises(MediaError) as err:
            check_media_size(width, height, min_resolution=0, min_aspect_ratio=0.51)
        assert err.value.reason == "bad_aspect_ratio"
