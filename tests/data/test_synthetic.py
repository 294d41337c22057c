"""The synthetic dataset: real encoded media whose captions agree with their pixels."""

from __future__ import annotations

import glob
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from divot_llm.data import synthetic
from divot_llm.data.synthetic import SyntheticCounts, read_scene_from_frames, write_synthetic_dataset
from divot_llm.data.video_codec import decode_video, encode_video
from tests import helpers

VIDEO_CAPTION = re.compile(r"^a (\w+) (\w+) moving (\w+) on a (\w+) background$")
IMAGE_CAPTION = re.compile(r"^a (\w+) (\w+) on a (\w+) background$")
SMALL = SyntheticCounts(train_videos=10, val_videos=3, images=6, samples_per_shard=4)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    """Written through the real recipe CLI, as a user would; in one process: each spawned
    worker imports the recipes (torch included) anew, twice the CPU of this small set
    (several workers write the same bytes: test_same_seed_writes_identical_bytes...)."""
    out = tmp_path_factory.mktemp("synthetic") / "set"
    helpers.run_command(
        [helpers.PYTHON, "-m", "data_recipes", "synthetic", "--out", str(out), "--seed", "3",
         "--train-videos", str(SMALL.train_videos), "--val-videos", str(SMALL.val_videos),
         "--images", str(SMALL.images), "--samples-per-shard", str(SMALL.samples_per_shard),
         "--workers", "1"],
        cwd=helpers.REPO_ROOT,
    )  # fmt: skip
    return out


def _samples(pattern: str) -> list[dict]:
    urls = sorted(glob.glob(pattern))
    assert urls, pattern
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_every_video_decodes_and_its_caption_matches_the_pixels(synthetic_dir):
    samples = _samples(str(synthetic_dir / "*" / "videos" / "shard-*.tar"))
    assert len(samples) == SMALL.train_videos + SMALL.val_videos
    codecs = set()
    for sample in samples:
        ext = next(e for e in ("mp4", "webm", "gif") if e in sample)
        video = decode_video(sample[ext])  # PyAV
        codecs.add(video.codec)
        color, shape, direction, background = VIDEO_CAPTION.match(sample["txt"].decode()).groups()
        seen = read_scene_from_frames(video.frames)
        assert seen == {"color": color, "shape": shape, "direction": direction, "background": background}, (
            sample["__key__"]
        )
    assert codecs == {"h264", "mpeg4", "vp9", "gif"}


def test_every_image_decodes_and_its_caption_matches_the_pixels(synthetic_dir):
    samples = _samples(str(synthetic_dir / "train" / "images" / "shard-*.tar"))
    assert len(samples) == SMALL.images
    assert {"jpg", "png"} & set().union(*samples) == {"jpg", "png"}
    for sample in samples:
        ext = "jpg" if "jpg" in sample else "png"
        pixels = np.asarray(Image.open(io.BytesIO(sample[ext])).convert("RGB"))
        color, shape, background = IMAGE_CAPTION.match(sample["txt"].decode()).groups()
        seen = synthetic.analyse_frame(pixels)
        assert (seen["color"], seen["background"]) == (color, background)
        assert synthetic.shape_from_fill(seen["fill"]) == shape


def test_videos_vary_in_size_rate_length_and_timing(synthetic_dir):
    metas = [json.loads(s["json"]) for s in _samples(str(synthetic_dir / "*" / "videos" / "*.tar"))]
    assert len({(m["width"], m["height"]) for m in metas}) >= 3
    assert len({m["fps"] for m in metas}) >= 2
    assert any(m["display_rotation"] == 90 for m in metas)  # stored sideways, shown upright
    vfr = [
        s
        for s in _samples(str(synthetic_dir / "train" / "videos" / "*.tar"))
        if json.loads(s["json"])["variable_frame_rate"]
    ]
    assert vfr, "the set must contain a variable-frame-rate video"
    steps = np.diff(decode_video(vfr[0]["mp4"]).times_s)
    assert steps.max() > 1.3 * steps.min()  # really irregular frame times
    # the generator's full range (no encoding needed to check it)
    specs = [synthetic.sample_video_spec(0, "train", i) for i in range(200)]
    durations = [s.duration_s for s in specs]
    assert 1.0 <= min(durations) < 2.0 and 15.0 < max(durations) <= 20.0


def test_jsonl_files_reference_existing_media_in_the_reference_formats(synthetic_dir):
    media = synthetic_dir / "media"
    ann = synthetic_dir / "annotations"
    captions = [json.loads(line) for line in (ann / "video_caption.jsonl").read_text().splitlines()]
    assert len(captions) == SMALL.train_videos
    assert any(isinstance(c["caption"], list) for c in captions) and any(
        isinstance(c["caption"], str) for c in captions
    )
    video_qa = [json.loads(line) for line in (ann / "video_qa.jsonl").read_text().splitlines()]
    image_qa = [json.loads(line) for line in (ann / "image_qa.jsonl").read_text().splitlines()]
    assert {frozenset(x) for x in video_qa} <= {
        frozenset({"video", "question", "answer"}),
        frozenset({"video", "questions", "answers"}),
    }
    assert {frozenset(x) for x in image_qa} <= {
        frozenset({"image", "questions", "answers"}),
        frozenset({"image", "data"}),
    }
    for line in captions + video_qa:
        assert (media / line["video"]).is_file()
    for line in image_qa:
        assert (media / line["image"]).is_file()
    # QA answers are true of the video they ask about
    for line in video_qa:
        answers = line["answers"] if "answers" in line else [line["answer"]]
        frames = decode_video(media / line["video"]).frames
        scene = read_scene_from_frames(frames)
        for answer in answers:
            named = set(re.findall(r"\w+", answer.lower()))
            for attr in ("color", "shape", "direction", "background"):
                vocabulary = {"color": synthetic.COLORS, "background": synthetic.COLORS, "shape": synthetic.SHAPES,
                              "direction": synthetic.DIRECTIONS}[attr]  # fmt: skip
                mentioned = named & set(vocabulary)
                assert not mentioned or mentioned <= {
                    scene["color"],
                    scene["background"],
                    scene["shape"],
                    scene["direction"],
                }


def test_same_seed_writes_identical_bytes_with_any_workers_and_another_seed_differs(tmp_path):
    counts = SyntheticCounts(train_videos=4, val_videos=0, images=2, samples_per_shard=3)
    a, b, c = (tmp_path / n for n in "abc")
    write_synthetic_dataset(a, seed=1, counts=counts)
    write_synthetic_dataset(b, seed=1, counts=counts, workers=2)  # encoded in 2 processes
    write_synthetic_dataset(c, seed=2, counts=counts)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "annotations/video_caption.jsonl").read_text() != (
        c / "annotations/video_caption.jsonl"
    ).read_text()


def test_encode_decode_round_trip_keeps_colours():
    frames = np.zeros((6, 32, 48, 3), np.uint8)
    frames[:, :, :24] = synthetic.COLORS["red"]
    frames[:, :, 24:] = synthetic.COLORS["blue"]
    for codec in ("h264", "mpeg4", "vp9", "gif"):
        video = decode_video(encode_video(frames, fps=8, codec=codec))
        assert video.frames.shape == (6, 32, 48, 3)
        assert synthetic.nearest_color(video.frames[3, 16, 4]) == "red"
        assert synthetic.nearest_color(video.frames[3, 16, 44]) == "blue"
        np.testing.assert_allclose(video.times_s, np.arange(6) / 8, atol=0.011)
    with pytest.raises(ValueError, match="even"):
        encode_video(np.zeros((2, 31, 32, 3), np.uint8), fps=8)


def test_bit_rate_sets_the_average_bitrate_in_place_of_crf():
    # noise, so x264 spends whatever it is given; its default (crf 23) lands in between
    frames = np.random.default_rng(0).integers(0, 256, (80, 64, 96, 3), dtype=np.uint8)  # 10 s at 8 fps
    crf_rate = 8 * len(encode_video(frames, fps=8, codec="h264")) / 10
    for bit_rate in (60_000, 600_000):
        rate = 8 * len(encode_video(frames, fps=8, codec="h264", bit_rate=bit_rate)) / 10
        assert abs(rate - bit_rate) < 0.1 * bit_rate, (bit_rate, rate, crf_rate)
    assert 60_000 * 1.1 < crf_rate < 600_000 * 0.9
