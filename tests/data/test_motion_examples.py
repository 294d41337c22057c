"""Motion examples through the loader on real videos: every sample once per epoch over
2 ranks x 2 workers, the motion cache (built in two ``--shard`` halves, the second by the
``divot-data motion-cache`` command resuming) giving the live examples up to fp16, exact
resume, bad records skipped and counted with their ``shard:key`` -- the same with the cache
-- and a cache made for other settings refused."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tarfile
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch

from data_recipes.__main__ import main
from divot_llm.config import compose_config
from divot_llm.config.schema import SourceConfig, SourceKind
from divot_llm.data.motion_cache import MotionCacheInfo, motion_tokenizer_fingerprint
from divot_llm.data.motion_cache_build import build_motion_cache
from divot_llm.data.motion_examples import MotionExampleSpec, build_motion_loader
from divot_llm.data.motion_vectors import motion_clips
from divot_llm.data.synthetic import sample_video_spec
from divot_llm.data.video_codec import encode_video
from divot_llm.runtime import seed_everything
from divot_llm.tokenizers.motion.registry import MOTION_TOKENIZERS
from tests.data.conftest import SMALL_COUNTS

# the tiny experiment's clips (2 s: two GOPs of 6 frames at 6 fps) on a small field grid
MOTION = ["data=synthetic_motion", "data.num_workers=0", "data.infinite=false", "data.batch_size=2",
          "data.motion.gop=6", "data.motion.height=10", "data.motion.width=18"]  # fmt: skip
TRAIN_KEYS = sorted(f"shard-00000.tar:train-vid-{i:06d}" for i in range(SMALL_COUNTS.train_videos))
VAL_KEYS = sorted(f"shard-00000.tar:val-vid-{i:06d}" for i in range(SMALL_COUNTS.val_videos))


@pytest.fixture(scope="module")
def data_cfg(small_synthetic):
    return compose_config([*MOTION, f"data.root={small_synthetic}"]).data


@pytest.fixture(scope="module")
def cache(data_cfg, tmp_path_factory):
    """The set's motion cache: shard 0 of 2 built in process, then the command fills in the
    rest (skipping what is there). Returns (folder, shard 0's counts, the command's output)."""
    out = tmp_path_factory.mktemp("motion") / "cache"
    first = build_motion_cache(data_cfg, MotionCacheInfo.of(data_cfg.motion), out, shard=(0, 2))
    overrides = [*MOTION, f"data.root={data_cfg.root}"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["motion-cache", "--out", str(out), "--workers", "0", "--", *overrides]) == 0
    return out, first, printed.getvalue()


@pytest.fixture(scope="module")
def live_epoch(data_cfg):
    """One epoch of the train split, extracted while loading by 2 ranks x 2 workers: the
    keys in the order seen and each key's (motion, start_frame)."""
    data = replace(data_cfg, num_workers=2)
    seen, examples = [], {}
    for rank in range(2):
        loader = build_motion_loader(data, MotionExampleSpec(data.motion), rank, world_size=2)
        for batch in loader:
            for key, motion, start in zip(batch["keys"], batch["motion"], batch["start_frame"], strict=True):
                seen.append(key)
                examples[key] = (motion, int(start))
        assert loader.skip_counts() == {}
    return seen, examples


def take(loader, n: int) -> list[dict]:
    batches = iter(loader)
    return [next(batches) for _ in range(n)]


def by_key(batches) -> dict[str, tuple[torch.Tensor, int]]:
    return {
        key: (motion, int(start))
        for batch in batches
        for key, motion, start in zip(batch["keys"], batch["motion"], batch["start_frame"], strict=True)
    }


def test_every_sample_once_per_epoch_over_2_ranks_x_2_workers(live_epoch, data_cfg):
    seen, examples = live_epoch
    assert sorted(seen) == TRAIN_KEYS  # each once: the readers partition the epoch
    motion = data_cfg.motion
    for key, (field, start) in examples.items():
        assert (
            field.shape == (2, motion.clip_frames, motion.height, motion.width)
            and field.dtype == torch.float32
        )
        assert start % motion.gop == 0, key  # a clip starts at an I-frame
        assert field.abs().amax() > 0, key  # every synthetic video has a moving shape


def test_the_cache_gives_the_live_examples_up_to_fp16(cache, live_epoch, data_cfg):
    out, first, printed = cache
    files = sorted(f.relative_to(out).as_posix() for f in out.rglob("*.safetensors"))
    assert len(files) == len(TRAIN_KEYS) + len(VAL_KEYS) and 0 < first["written"] < len(files)
    assert (
        f"already_cached {first['written']}" in printed
        and f"written {len(files) - first['written']}" in printed
    )

    cached_cfg = replace(data_cfg, motion_cache=str(out))
    spec = MotionExampleSpec(data_cfg.motion)
    cached = by_key(build_motion_loader(cached_cfg, spec))
    _, live = live_epoch
    assert sorted(cached) == TRAIN_KEYS
    for key, (field, start) in live.items():  # the same clip of each video, its field rounded to fp16
        assert cached[key][1] == start, key
        assert torch.equal(cached[key][0], field.half().float()), key
    # validation (start_index 0): each video's first clip, from the videos and from the cache
    val_live = by_key(build_motion_loader(data_cfg, spec, split="val"))
    val_cached = by_key(build_motion_loader(cached_cfg, spec, split="val"))
    assert sorted(val_live) == sorted(val_cached) == VAL_KEYS
    for i, key in enumerate(VAL_KEYS):
        video = sample_video_spec(4, "val", i)
        clips = motion_clips(data_cfg.root + f"/media/videos/{video.key}.{video.extension}", data_cfg.motion)
        assert val_live[key][1] == val_cached[key][1] == clips.start_frames[0], key
        assert torch.equal(val_live[key][0], clips.fields[0]), key
        assert torch.equal(val_cached[key][0], clips.fields[0].half().float()), key


def test_a_resumed_loader_continues_the_exact_batches(cache, data_cfg):
    out, *_ = cache
    data = replace(data_cfg, motion_cache=str(out), infinite=True)  # batches cross epochs
    spec = MotionExampleSpec(data.motion)
    uninterrupted = take(build_motion_loader(data, spec), 15)
    first = build_motion_loader(data, spec)
    head = take(first, 2)
    resumed = build_motion_loader(data, spec)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as a checkpoint keeps it
    tail = take(resumed, 3)
    for expected, got in zip(uninterrupted, head + tail, strict=False):
        assert got["keys"] == expected["keys"]
        assert torch.equal(got["start_frame"], expected["start_frame"])
        assert torch.equal(got["motion"], expected["motion"])
    # five epochs: a video with several clips gives another one in some epoch
    starts: dict[str, set[int]] = {}
    for batch in uninterrupted:
        for key, start in zip(batch["keys"], batch["start_frame"].tolist(), strict=True):
            starts.setdefault(key, set()).add(start)
    assert max(len(s) for s in starts.values()) > 1


def _tiny_video(frames: int, size: int) -> bytes:
    """A square moving across a ``size`` px frame, ``frames`` frames at 8 fps."""
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        video[t, size // 4 : size // 2, 2 * t : 2 * t + size // 4] = 255
    return encode_video(video, 8)


def test_bad_records_are_skipped_and_counted_with_their_key_the_same_from_the_cache(
    data_cfg, small_synthetic, tmp_path, caplog
):
    good = sample_video_spec(4, "train", 1)  # 2.3 s: one 2-s clip
    members = {
        "good.mp4": (small_synthetic / "media" / "videos" / f"{good.key}.mp4").read_bytes(),
        "short.mp4": _tiny_video(6, 128),  # 0.75 s: no whole clip
        "small.mp4": _tiny_video(20, 64),  # 2.5 s but under min_resolution 100
        "junk.mp4": b"not a video at all" * 50,
        "still.png": (next((small_synthetic / "media" / "images").glob("*.png"))).read_bytes(),
    }
    members |= {f"{name.split('.')[0]}.txt": b"a caption" for name in members}  # shards' records carry text
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    source = SourceConfig(kind=SourceKind.webdataset, paths=["bad.tar"])
    data = replace(data_cfg, root=str(tmp_path), sources={"mixed": source}, max_skip_fraction=1.0)
    spec = MotionExampleSpec(data.motion)
    expected = {"no_motion_clip": 2, "corrupt_video": 1, "too_small": 1}

    loader = build_motion_loader(data, spec)
    with caplog.at_level(logging.WARNING, logger="divot_llm.data.sources"):
        assert [key for batch in loader for key in batch["keys"]] == ["bad.tar:good"]
    assert loader.skip_counts() == expected
    for where in ("bad.tar:short (no_motion_clip)", "bad.tar:junk (corrupt_video)", "bad.tar:still (no_motion_clip)",
                  "bad.tar:small (too_small)"):  # fmt: skip
        assert where in caplog.text

    # the cache extracts regardless of size (the filter applies when it is read) and records
    # why a sample has no clip: the cached loader skips and counts the same
    counts = build_motion_cache(data, MotionCacheInfo.of(data.motion), tmp_path / "cache", splits=("train",))
    assert counts == {"written": 2, "no_motion_clip": 2, "corrupt_video": 1}
    cached = build_motion_loader(replace(data, motion_cache=str(tmp_path / "cache")), spec)
    assert [key for batch in cached for key in batch["keys"]] == ["bad.tar:good"]
    assert cached.skip_counts() == expected


def test_a_cache_made_for_other_settings_is_refused(cache, data_cfg):
    out, *_ = cache
    other = replace(data_cfg.motion, gop=12)
    with pytest.raises(ValueError, match=r"data.motion.gop: cache 6 != run 12.*Rebuild it") as refused:
        build_motion_loader(replace(data_cfg, motion=other, motion_cache=str(out)), MotionExampleSpec(other))
    assert str(refused.value).count("data.motion.") == 1  # only what differs is named
    tokens = MotionExampleSpec(data_cfg.motion, tokenizer_fingerprint="0" * 20)
    with pytest.raises(ValueError, match="it holds motion fields, this run reads codes"):
        build_motion_loader(replace(data_cfg, motion_cache=str(out)), tokens)
    with pytest.raises(ValueError, match="motion cache built with .*--tokens"):
        build_motion_loader(data_cfg, tokens)
    # a build never adds another setup's samples to a cache
    with pytest.raises(ValueError, match="data.motion.gop"):
        build_motion_cache(replace(data_cfg, motion=other), MotionCacheInfo.of(other), out)


def test_a_tokens_cache_holds_the_motion_tokenizers_codes_of_each_clip(data_cfg, tmp_path):
    """``--tokens``: the codes the configured motion tokenizer gives each clip, read back as
    ``motion_codes``; a run with another tokenizer refuses them."""
    out = tmp_path / "tokens"
    overrides = [*MOTION, f"data.root={data_cfg.root}", "motion_tokenizer=lavit_tiny"]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["motion-cache", "--out", str(out), "--tokens", "--workers", "0", "--", *overrides]) == 0
        assert main(["motion-cache", "--out", str(tmp_path / "none"), "--tokens", "--", *MOTION]) == 2
    assert "--tokens needs a motion tokenizer" in printed.getvalue()

    cfg = compose_config(overrides)
    seed_everything(cfg.train.seed)  # the tokenizer the command built (random init: tiny config)
    cls, config = MOTION_TOKENIZERS.resolve(cfg.motion_tokenizer)
    tokenizer = cls.from_config(config).eval()
    spec = MotionExampleSpec(cfg.data.motion, motion_tokenizer_fingerprint(tokenizer, asdict(config)))
    cached = replace(cfg.data, motion_cache=str(out))
    batches = list(build_motion_loader(cached, spec, split="val"))
    codes = {k: c for b in batches for k, c in zip(b["keys"], b["motion_codes"], strict=True)}
    assert sorted(codes) == VAL_KEYS
    for i, key in enumerate(VAL_KEYS):
        video = sample_video_spec(4, "val", i)
        clips = motion_clips(data_cfg.root + f"/media/videos/{video.key}.{video.extension}", cfg.data.motion)
        expected = tokenizer.encode(clips.fields[:1])[0]
        assert codes[key].dtype == torch.int64 and torch.equal(codes[key], expected), key

    torch.manual_seed(1)
    other = motion_tokenizer_fingerprint(cls.from_config(config), asdict(config))  # other weights
    with pytest.raises(ValueError, match="motion tokenizer: cache lavit_motion_tiny .* != run"):
        build_motion_loader(cached, replace(spec, tokenizer_fingerprint=other))
