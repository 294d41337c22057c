"""De-tokenizer examples on real synthetic videos: frame times and pixels of one video,
the compressed window of a short video, batches through the loader (shapes, captions,
exact resume, bad videos skipped and counted)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from divot_llm.config import compose_config
from divot_llm.data.clip_sampling import to_model_pixels
from divot_llm.data.detok_examples import DetokExampleSpec, build_detok_loader, read_detok_video
from divot_llm.data.synthetic import SyntheticCounts, render_video, sample_video_spec, write_synthetic_dataset

SEED = 5
COUNTS = SyntheticCounts(train_videos=6, val_videos=2, images=2, samples_per_shard=3)
SPEC = DetokExampleSpec(num_frames=8, fps=8.0, image_size=32)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("detok_examples") / "synthetic"
    write_synthetic_dataset(out, seed=SEED, counts=COUNTS)
    return out


def video_path(root, index: int):
    spec = sample_video_spec(SEED, "train", index)
    return spec, root / "media" / "videos" / f"{spec.key}.{spec.extension}"


def test_a_detok_video_is_num_frames_at_fps_with_the_frames_on_screen_then(root):
    # constant-rate videos of each codec; the VFR one (index 4) samples by nominal time too
    for index in (0, 1, 2, 3):
        spec, path = video_path(root, index)
        video_fchw, times_f = read_detok_video(path, SPEC, np.random.default_rng(index))
        assert video_fchw.shape == (8, 3, 32, 32) and video_fchw.dtype == torch.float32
        assert -1 <= video_fchw.min() and video_fchw.max() <= 1
        if spec.duration_s >= 1.0 + 1 / spec.fps:  # long enough for a real 1-s window at 8 fps
            # integer source frames every fps/8 frames: steps of 1/8 s to within one source frame
            assert np.abs(np.diff(times_f) - 1 / 8).max() <= 1 / spec.fps + 1e-9, (index, times_f)
            assert times_f[-1] - times_f[0] == pytest.approx(7 / 8, abs=1 / spec.fps + 1e-9)
        assert 0 <= times_f[0] and times_f[-1] <= spec.duration_s
        # the pixels are the rendered frames on screen at those times (up to codec loss)
        frames, render_times = render_video(spec)
        nearest = [int(np.abs(render_times - t).argmin()) for t in times_f]
        expected = to_model_pixels(list(frames[nearest]), 32)
        assert (video_fchw - expected).abs().mean() < 0.02, index  # half a second off: > 0.05


def test_a_video_shorter_than_the_window_is_spread_over_it(root):
    spec, path = video_path(root, 0)
    long_spec = DetokExampleSpec(num_frames=16, fps=2.0, image_size=32)  # 8 s > every short video
    assert spec.duration_s < 8
    _, times_f = read_detok_video(path, long_spec, np.random.default_rng(0))
    assert len(times_f) == 16 and np.all(np.diff(times_f) >= 0)
    # the reference's rule: a random start within the first sampled frame, then the rest of the video
    assert times_f[0] < 1 / long_spec.fps and times_f[-1] >= spec.duration_s - 2 / spec.fps


def detok_cfg(data_root, *overrides):
    return compose_config(
        [
            "data=synthetic_detok",
            f"data.root={data_root}",
            "data.num_workers=0",
            "data.batch_size=3",
            *overrides,
        ]
    )


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_loader_batches_are_detok_videos_with_captions_and_resume_exactly(root):
    cfg = detok_cfg(root)
    first = take(build_detok_loader(cfg.data, SPEC), 4)
    for batch in first:
        assert batch["video"].shape == (3, 8, 3, 32, 32)
        assert batch["frame_times"].shape == (3, 8)
        assert len(batch["captions"]) == 3 and all(isinstance(c, str) and c for c in batch["captions"])
    sources = {s for b in first for s in b["sources"]}
    assert sources == {"videos_jsonl", "videos_tar"}

    loader = build_detok_loader(cfg.data, SPEC)
    take(loader, 2)
    state = json.loads(json.dumps(loader.state_dict()))  # what a checkpoint keeps
    resumed = build_detok_loader(cfg.data, SPEC)
    resumed.load_state_dict(state)
    for expected, got in zip(first[2:], take(resumed, 2), strict=True):
        assert got["keys"] == expected["keys"] and got["captions"] == expected["captions"]
        torch.testing.assert_close(got["video"], expected["video"], rtol=0, atol=0)

    val = list(build_detok_loader(cfg.data, SPEC, split="val"))
    assert sum(len(b["keys"]) for b in val) == COUNTS.val_videos  # one finite pass


def test_bad_videos_are_skipped_and_counted(root, tmp_path):
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    _, good = video_path(root, 0)
    shutil.copy(good, data / "media" / "good.mp4")
    (data / "media" / "bad.mp4").write_bytes(b"not a video at all" * 100)
    lines = [{"video": "good.mp4", "caption": "a clip"}, {"video": "bad.mp4", "caption": "broken"},
             {"video": "missing.mp4", "caption": "gone"}]  # fmt: skip
    (data / "clips.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    cfg = detok_cfg(
        data,
        "~data.sources.videos_tar",
        "data.sources.videos_jsonl.paths=[clips.jsonl]",
        "data.sources.videos_jsonl.media_root=media",
        "data.batch_size=2",
    )
    loader = build_detok_loader(cfg.data, SPEC)
    batch = take(loader, 1)[0]
    assert batch["captions"] == ["a clip", "a clip"]  # only the good video, twice (two epochs)
    counts = loader.skip_counts()
    assert counts["corrupt_video"] >= 1 and counts["missing_file"] >= 1


def write_gif(path, colours: list[tuple[int, int, int]], width: int, height: int, frame_ms: int) -> None:
    """A gif of solid-colour frames (exact in its palette), written by PIL."""
    frames = [Image.fromarray(np.full((height, width, 3), colour, np.uint8)) for colour in colours]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)


def test_a_folder_of_captioned_gifs_of_any_length_and_shape_feeds_the_detok_loader(tmp_path):
    """The seed's layout through the real loader and PyAV: a 3-frame 40x24 gif is spread
    over the 8-frame window (its frames in order), a 20-frame one gives 8 of its frames at
    8 fps, both centre-cropped square; captions come from the .txt lines; exact resume."""
    short = [(0, 100, 200), (60, 100, 200), (120, 100, 200)]
    long = [(i * 12, 50, 50) for i in range(20)]
    (tmp_path / "sub").mkdir()
    write_gif(tmp_path / "short.gif", short, width=40, height=24, frame_ms=100)
    (tmp_path / "short.txt").write_text("a short wide clip\n")
    write_gif(tmp_path / "sub" / "long.gif", long, width=24, height=24, frame_ms=50)
    (tmp_path / "sub" / "long.txt").write_text("a long clip\nthe same long clip\n")
    write_gif(tmp_path / "uncaptioned.gif", short, width=24, height=24, frame_ms=100)
    cfg = compose_config(
        ["data=gif_folder", f"data.root={tmp_path}", "data.num_workers=0", "data.batch_size=2"]
    )
    spec = DetokExampleSpec(num_frames=8, fps=8.0, image_size=16)
    loader = build_detok_loader(cfg.data, spec)
    first = take(loader, 3)
    for batch in first:
        assert batch["video"].shape == (2, 8, 3, 16, 16)
        for key, caption, video_fchw in zip(batch["keys"], batch["captions"], batch["video"], strict=True):
            red_f = ((video_fchw[:, 0] + 1) * 127.5).round().flatten(1)  # (F, 256): solid frames
            assert (red_f == red_f[:, :1]).all()
            reds = red_f[:, 0].tolist()
            if key == "short.gif":
                assert caption == "a short wide clip"
                assert reds[0] == 0 and reds[-1] == 120 and set(reds) == {0, 60, 120} and reds == sorted(reds)
            else:
                assert key == "sub/long.gif" and caption in ("a long clip", "the same long clip")
                assert len(set(reds)) == 8 and reds == sorted(reds)  # 8 distinct frames, in order
    assert loader.skip_counts()["missing_caption"] >= 1

    loader = build_detok_loader(cfg.data, spec)
    take(loader, 1)
    resumed = build_detok_loader(cfg.data, spec)
    resumed.load_state_dict(json.loads(json.dumps(loader.state_dict())))
    for expected, got in zip(first[1:], take(resumed, 2), strict=True):
        assert got["keys"] == expected["keys"] and got["captions"] == expected["captions"]
        torch.testing.assert_close(got["video"], expected["video"], rtol=0, atol=0)
