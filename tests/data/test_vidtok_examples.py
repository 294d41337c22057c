"""VidTok examples on real encoded videos: the frame-index rule, a DATA_DIR + CSV through the
loader (clip pixels, fixed validation clips, rank sharding, exact resume), bad rows skipped
and counted with their ``csv:line``, paths kept inside their roots, and the synthetic set
in VidTok's layout and ours (``data=synthetic_vidtok``)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from divot_llm.config import compose_config
from divot_llm.config.schema import SourceKind
from divot_llm.data.clip_sampling import to_model_pixels
from divot_llm.data.detok_examples import DetokExampleSpec
from divot_llm.data.loader import loader_spec
from divot_llm.data.sources import DataError
from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset
from divot_llm.data.video_codec import encode_video
from divot_llm.data.vidtok_examples import VidTokExampleSpec, build_vidtok_loader, vidtok_frame_indices
from tests.data.test_clip_sampling import _indexed_frames

SPEC = VidTokExampleSpec(num_frames=5, height=16, width=24)  # non-square: 64x48 video covers it
# name -> (fps, frames): long enough for the 3-fps stride; too short for it; fewer frames than a clip
VIDEOS = {"a.mp4": (24, 60), "sub/b.mp4": (30, 20), "c.mp4": (24, 3)}


def rendered(name: str) -> torch.Tensor:
    """Every frame of a test video as the model sees it, (T, 3, H, W), before coding loss."""
    return to_model_pixels(list(_indexed_frames(VIDEOS[name][1])), (SPEC.height, SPEC.width))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """VidTok's layout: videos/ (the DATA_DIR, nested) + train.csv and val.csv beside it."""
    root = tmp_path_factory.mktemp("vidtok_data")
    for name, (fps, count) in VIDEOS.items():
        path = root / "videos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_video(_indexed_frames(count), fps))
    (root / "train.csv").write_text("videos\n" + "".join(f"{name}\n" for name in VIDEOS))
    (root / "val.csv").write_text('videos\na.mp4\n"sub/b.mp4"\n')
    return root


@pytest.fixture(scope="module")
def template():
    """``data=vidtok_csv``, the layout users copy (composed once: Hydra takes ~0.5 s a call)."""
    return compose_config(["data=vidtok_csv", "data.root=.", "data.num_workers=0"]).data


def csv_data(template, root, source=None, **changes):
    """The template over ``root``, its train source and data settings changed."""
    sources = {"videos": replace(template.sources["videos"], **(source or {}))}
    return replace(template, root=str(root), sources=sources, **changes)


def take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_clip_indices_follow_the_stride_from_a_random_or_fixed_start():
    rngs = [np.random.default_rng(i) for i in range(200)]
    # 60 frames at 24 fps sampled at 3 fps: stride 8, 5 frames span 32, starts 0..27
    clips = [vidtok_frame_indices(60, 24.0, 5, 3.0, rng) for rng in rngs]
    for clip in clips:
        assert (np.diff(clip) == 8).all() and 0 <= clip[0] <= 27
    assert {int(c[0]) for c in clips} >= {0, 27}  # both ends of the start range are drawn
    fixed = vidtok_frame_indices(60, 24.0, 5, 3.0, rngs[0], start_index=4)
    assert fixed.tolist() == [4, 12, 20, 28, 36]
    assert vidtok_frame_indices(60, 24.0, 5, 3.0, rngs[0], start_index=50).tolist() == [27, 35, 43, 51, 59]
    assert vidtok_frame_indices(60, 29.97, 5, 8.0, rngs[0], start_index=0).tolist() == [0, 4, 8, 12, 16]
    # too short for the stride: spread over the whole video; fewer frames: the last repeated
    assert vidtok_frame_indices(20, 30.0, 5, 3.0, rngs[0]).tolist() == [0, 4, 9, 14, 19]
    assert vidtok_frame_indices(3, 24.0, 5, 3.0, rngs[0]).tolist() == [0, 1, 2, 2, 2]
    # no sample_fps, or one above the video's rate: every frame
    assert vidtok_frame_indices(10, 8.0, 4, None, rngs[0], start_index=2).tolist() == [2, 3, 4, 5]
    assert vidtok_frame_indices(10, 8.0, 4, 30.0, rngs[0], start_index=2).tolist() == [2, 3, 4, 5]


def test_a_data_dir_and_csv_give_clips_of_the_indexed_frames_and_fixed_val_clips(template, data_root):
    data = csv_data(template, data_root, infinite=False, batch_size=2)
    examples = {}
    for batch in build_vidtok_loader(data, SPEC):
        assert batch["video"].shape[1:] == (5, 3, 16, 24) and batch["video"].dtype == torch.float32
        assert -1 <= batch["video"].min() and batch["video"].max() <= 1
        for key, clip, indices in zip(batch["keys"], batch["video"], batch["frame_indices"], strict=True):
            examples[key] = (clip, indices.tolist())
    assert sorted(examples) == ["train.csv:2", "train.csv:3", "train.csv:4"]  # one epoch, each row once
    for key, name in zip(sorted(examples), VIDEOS, strict=True):
        clip, indices = examples[key]
        frames = rendered(name)
        # each clip frame is the source frame it names (nearest rendered frame, up to coding loss)
        nearest = [int((frames - frame).abs().mean(dim=(1, 2, 3)).argmin()) for frame in clip]
        assert nearest == indices, name
    start = examples["train.csv:2"][1][0]
    assert examples["train.csv:2"][1] == [start + 8 * k for k in range(5)] and 0 <= start <= 27
    assert examples["train.csv:3"][1] == [0, 4, 9, 14, 19]
    assert examples["train.csv:4"][1] == [0, 1, 2, 2, 2]

    # validation: 8 fps from frame 0, the same clips every pass
    passes = [list(build_vidtok_loader(data, SPEC, split="val")) for _ in range(2)]
    for batches in passes:
        indices = {k: i.tolist() for b in batches for k, i in zip(b["keys"], b["frame_indices"], strict=True)}
        assert indices == {"val.csv:2": [0, 3, 6, 9, 12], "val.csv:3": [0, 4, 8, 12, 16]}
    torch.testing.assert_close(passes[0][0]["video"], passes[1][0]["video"], rtol=0, atol=0)


def test_ranks_share_the_rows_and_a_resumed_loader_continues_the_exact_batches(template, data_root):
    data = csv_data(template, data_root, infinite=False, batch_size=1)
    seen = [k for rank in range(2) for b in build_vidtok_loader(data, SPEC, rank, 2) for k in b["keys"]]
    assert sorted(seen) == ["train.csv:2", "train.csv:3", "train.csv:4"]

    data = csv_data(template, data_root, batch_size=2)  # infinite: batches cross epochs
    uninterrupted = take(build_vidtok_loader(data, SPEC), 5)
    first = build_vidtok_loader(data, SPEC)
    head = take(first, 2)  # mid-epoch: 4 of the 3-row epochs' 6 clips
    resumed = build_vidtok_loader(data, SPEC)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as a checkpoint keeps it
    for expected, got in zip(uninterrupted, head + take(resumed, 3), strict=True):
        assert got["keys"] == expected["keys"]
        assert torch.equal(got["frame_indices"], expected["frame_indices"])
        torch.testing.assert_close(got["video"], expected["video"], rtol=0, atol=0)
    # a new epoch draws new random starts for the long video
    starts = {
        int(b["frame_indices"][i, 0])
        for b in uninterrupted
        for i, k in enumerate(b["keys"])
        if k.endswith(":2")
    }
    assert len(starts) > 1


def test_an_image_of_a_jsonl_source_is_a_still_clip(template, tmp_path):
    frame_hw3 = _indexed_frames(6)[5]
    Image.fromarray(frame_hw3).save(tmp_path / "still.png")
    (tmp_path / "stills.jsonl").write_text(json.dumps({"image": "still.png", "caption": "a still"}) + "\n")
    source = {"kind": SourceKind.jsonl, "paths": ["stills.jsonl"], "media_root": "."}
    [batch] = take(build_vidtok_loader(csv_data(template, tmp_path, source, batch_size=1), SPEC), 1)
    still = to_model_pixels([frame_hw3], (SPEC.height, SPEC.width))  # (1, 3, H, W): png is lossless
    assert torch.equal(batch["video"][0], still.expand(SPEC.num_frames, -1, -1, -1))
    assert batch["frame_indices"].tolist() == [[0] * SPEC.num_frames]


def test_bad_rows_are_skipped_and_counted_with_their_csv_line(template, data_root, tmp_path, caplog):
    media = tmp_path / "videos"
    media.mkdir()
    shutil.copy(data_root / "videos" / "a.mp4", media / "a.mp4")
    shutil.copy(data_root / "videos" / "c.mp4", media / "café.mp4")  # a UTF-8 name on disk
    (media / "junk.mp4").write_bytes(b"not a video at all" * 50)
    shutil.copy(data_root / "videos" / "a.mp4", tmp_path / "outside.mp4")  # inside data.root, outside media
    rows = [
        b"id,videos",
        b"1,a.mp4",  # 2: good
        b"2,missing.mp4",  # 3
        b"3,junk.mp4",  # 4: undecodable
        b"4,../outside.mp4",  # 5: leaves the media root
        b'5,"a.mp4',  # 6: unclosed quote
        b"6",  # 7: one field, the header has two
        b"7,",  # 8: empty path
        b'8,"a.mp4"',  # 9: good, quoted
        b"9,caf\xe9.mp4",  # 10: good, ISO-8859-1 as VidTok reads its CSVs
    ]
    (tmp_path / "train.csv").write_bytes(b"\n".join(rows) + b"\n")
    data = csv_data(template, tmp_path, infinite=False, batch_size=1, max_skip_fraction=1.0)
    loader = build_vidtok_loader(data, SPEC)
    with caplog.at_level(logging.WARNING, logger="divot_llm.data.sources"):
        keys = sorted(k for batch in loader for k in batch["keys"])
    assert keys == ["train.csv:10", "train.csv:2", "train.csv:9"]
    assert loader.skip_counts() == {"missing_file": 1, "corrupt_video": 1, "unsafe_path": 1, "bad_csv_line": 2,
                                    "bad_fields": 1}  # fmt: skip
    for line, reason in ((3, "missing_file"), (4, "corrupt_video"), (5, "unsafe_path"), (6, "bad_csv_line")):
        assert f"train.csv:{line} ({reason})" in caplog.text

    # more than max_skip_fraction bad (after the first 100 records) stops the run, naming the source
    (tmp_path / "train.csv").write_bytes(
        b"videos\na.mp4\n" + b"".join(b"gone%d.mp4\n" % i for i in range(120))
    )
    with pytest.raises(DataError, match="source videos: .* data.max_skip_fraction=0.5"):
        list(build_vidtok_loader(replace(data, max_skip_fraction=0.5), SPEC))


def test_start_up_refuses_what_cannot_feed_vidtok_clips(template, data_root, tmp_path):
    with pytest.raises(ValueError, match="escapes"):  # the media root must stay inside data.root
        build_vidtok_loader(csv_data(template, data_root, {"media_root": ".."}), SPEC)
    (tmp_path / "videos").mkdir()
    (tmp_path / "train.csv").write_text("video\na.mp4\n")
    with pytest.raises(DataError, match="train.csv has no 'videos' column"):
        build_vidtok_loader(csv_data(template, tmp_path), SPEC)
    data = csv_data(template, data_root)
    with pytest.raises(ValueError, match="only VidTok examples"):  # no text for the LLM stages ...
        loader_spec(data, 32, 5, 16)
    with pytest.raises(ValueError, match="only VidTok examples"):  # ... or the de-tokenizer's captions
        loader_spec(data, 0, 8, 16, example_kind=DetokExampleSpec(8, 8.0, 16))
    with pytest.raises(ValueError, match="data.resize_kernel=torch is for the LLM stages' clips"):
        build_vidtok_loader(replace(data, resize_kernel="torch"), SPEC)  # would be silently ignored
    jsonl = {"kind": SourceKind.jsonl, "paths": ["train.csv"]}  # a task picks the LLM's sequence template
    with pytest.raises(ValueError, match="source videos has no task"):
        loader_spec(csv_data(template, data_root, jsonl), 32, 5, 16)


def test_the_synthetic_set_feeds_vidtok_in_its_layout_and_ours(tmp_path):
    """data=synthetic_vidtok: training from the set's VidTok CSV, validation from its tar shards."""
    root = tmp_path / "synthetic"
    write_synthetic_dataset(root, seed=2, counts=SyntheticCounts(train_videos=2, val_videos=1, images=0))
    cfg = compose_config(["data=synthetic_vidtok", f"data.root={root}", "data.num_workers=0"])
    spec = VidTokExampleSpec(num_frames=9, height=32, width=32)
    [batch] = take(build_vidtok_loader(cfg.data, spec), 1)
    assert batch["video"].shape == (2, 9, 3, 32, 32) and set(batch["keys"]) == {"vidtok_train.csv:2",
                                                                                "vidtok_train.csv:3"}  # fmt: skip
    [val] = list(build_vidtok_loader(cfg.data, spec, split="val"))
    assert val["keys"] == ["shard-00000.tar:val-vid-000000"] and val["frame_indices"][0, 0] == 0
    assert (root / "annotations" / "vidtok_val.csv").read_text() == "videos\nvideos/val-vid-000000.mp4\n"
