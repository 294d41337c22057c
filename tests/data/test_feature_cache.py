"""Feature cache: cached features equal the tokenizer's on the frames the loader samples,
training batches from the cache give the same loss, mismatches are refused."""

from __future__ import annotations

import copy
import dataclasses
import json
import sys

import pytest
import torch

from divot_llm.config import apply_overrides, compose_config
from divot_llm.data.cache_build import build_feature_cache
from divot_llm.data.feature_cache import FeatureCache, expected_info
from divot_llm.data.loader import build_loader
from divot_llm.model import build_divot_llm
from divot_llm.runtime import seed_everything
from divot_llm.text import DivotTextTokenizer
from divot_llm.tokenizers import build_video_tokenizer

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "embeds_cmp_mask", "embeds_gen_mask", "ids_cmp_mask",
              "ids_gen_mask")  # fmt: skip


@pytest.fixture(scope="module")
def setup(tmp_path_factory, mistral_tokenizer_dir, small_synthetic):
    base = tmp_path_factory.mktemp("cache")
    cfg = compose_config([f"data.root={small_synthetic}", "data.num_workers=0"])
    seed_everything(int(cfg.train.seed))  # as the trainer (and `divot-data features`) build it
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    tokenizer_cfg = dataclasses.asdict(cfg.video_tokenizer)
    info = expected_info(video_tokenizer, tokenizer_cfg, cfg.data)
    counts = build_feature_cache(cfg.data, video_tokenizer, info, base / "cache", batch_clips=8)
    text = DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)
    return cfg, video_tokenizer, info, base / "cache", counts, text


def loader(cfg, text, info=None, cache=None):
    cfg = apply_overrides(cfg, [f"data.feature_cache={cache}"] if cache else [])
    vt = cfg.video_tokenizer
    return build_loader(cfg.data, text, vt.num_tokens, vt.frames_per_clip, vt.input_size, cache_info=info)


def test_cache_covers_every_sample_and_a_rerun_skips_them(setup, tmp_path):
    cfg, video_tokenizer, info, cache_dir, counts, _ = setup
    assert counts["written"] == 6 + 6 + 4 + 4 + 2 + 2  # 4 train sources + 2 val sources
    again = build_feature_cache(cfg.data, video_tokenizer, info, cache_dir)
    assert again["written"] == 0 and again["already_cached"] == counts["written"]


def test_parallel_readers_write_the_same_cache_and_counts(setup, tmp_path):
    """workers=2: every sample once, the same features, and bad media counted, not lost."""
    import shutil

    from safetensors.torch import load_file

    cfg, video_tokenizer, info, cache_dir, _, _ = setup
    data = tmp_path / "data"
    shutil.copytree(cfg.data.root, data)
    broken = sorted((data / "media" / "videos").glob("train-*.mp4"))[0]
    broken.write_bytes(broken.read_bytes()[:300])  # truncated: header only
    data_cfg = apply_overrides(cfg, [f"data.root={data}"]).data

    serial = build_feature_cache(data_cfg, video_tokenizer, info, tmp_path / "serial", batch_clips=8)
    parallel = build_feature_cache(
        data_cfg, video_tokenizer, info, tmp_path / "parallel", batch_clips=8, workers=2
    )
    assert parallel == serial
    assert serial["written"] == 6 + 6 + 4 + 4 + 2 + 2 - 1 and sum(serial.values()) == serial["written"] + 1
    files = sorted(f.relative_to(tmp_path / "serial") for f in (tmp_path / "serial").rglob("*.safetensors"))
    assert files == sorted(
        f.relative_to(tmp_path / "parallel") for f in (tmp_path / "parallel").rglob("*.safetensors")
    )
    for name in files:  # batches group other samples, so equal up to matmul rounding
        a, b = load_file(tmp_path / "serial" / name), load_file(tmp_path / "parallel" / name)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and they are the features of the unbroken samples written by the one-process build
    for name in files:
        torch.testing.assert_close(load_file(cache_dir / name), load_file(tmp_path / "serial" / name))


def test_shards_fill_one_cache_with_every_sample_once(setup, tmp_path):
    """``--shard I/N``: N builds (one per GPU) into one folder hold the one-process build's files."""
    from safetensors.torch import load_file

    cfg, video_tokenizer, info, cache_dir, _, _ = setup
    out = tmp_path / "sharded"
    counts = [
        build_feature_cache(cfg.data, video_tokenizer, info, out, splits=("val",), shard=(i, 2))
        for i in range(2)
    ]
    assert all(c["written"] > 0 for c in counts)
    files = sorted(f.relative_to(out) for f in out.rglob("*.safetensors"))
    assert len(files) == sum(c["written"] for c in counts)
    assert files == sorted(f.relative_to(cache_dir) for f in cache_dir.glob("val*/*.safetensors"))
    for name in files:
        torch.testing.assert_close(load_file(out / name), load_file(cache_dir / name), rtol=1e-5, atol=1e-6)


def test_cached_batches_equal_frame_batches_encoded(setup):
    cfg, video_tokenizer, info, cache_dir, _, text = setup
    # one epoch: the cache holds epoch-0 clips (later epochs reuse them by design)
    cfg = apply_overrides(cfg, ["data.infinite=false"])
    n = 0
    torch.manual_seed(1)
    model = build_divot_llm(
        cfg.model, feature_tokens=info.tokens_per_clip, feature_dim=info.feature_dim
    ).eval()
    for from_frames, from_cache in zip(loader(cfg, text), loader(cfg, text, info, cache_dir), strict=False):
        assert from_frames["keys"] == from_cache["keys"]
        assert torch.equal(from_frames["input_ids"], from_cache["input_ids"])  # same captions/prompts
        clips = from_frames["embeds_cmp_mask"] | from_frames["embeds_gen_mask"]
        feats = torch.zeros_like(from_cache["video_feats"])
        feats[clips] = video_tokenizer.encode(from_frames["frames"].float() / 127.5 - 1)  # real clips only
        torch.testing.assert_close(from_cache["video_feats"], feats, rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            loss_frames = model(**{k: from_frames[k] for k in MODEL_KEYS}, video_feats=feats).total_loss
            loss_cache = model(
                **{k: from_cache[k] for k in MODEL_KEYS}, video_feats=from_cache["video_feats"]
            ).total_loss
        torch.testing.assert_close(loss_cache, loss_frames, rtol=1e-6, atol=1e-6)
        n += 1
    assert n >= 4


def test_a_cache_from_another_tokenizer_or_sampling_is_refused(setup):
    cfg, video_tokenizer, info, cache_dir, _, text = setup
    torch.manual_seed(123)
    other = build_video_tokenizer(cfg.video_tokenizer)  # same config, other weights
    other_info = expected_info(other, dataclasses.asdict(cfg.video_tokenizer), cfg.data)
    with pytest.raises(ValueError, match="tokenizer_fingerprint"):
        loader(cfg, text, other_info, cache_dir)
    other_vit = copy.deepcopy(video_tokenizer)  # same weights after the ViT, another ViT
    next(other_vit.vit.parameters()).data.add_(0.01)
    other_vit_info = expected_info(other_vit, dataclasses.asdict(cfg.video_tokenizer), cfg.data)
    with pytest.raises(ValueError, match="frame_encoder_fingerprint") as refused:
        loader(cfg, text, other_vit_info, cache_dir)
    assert "tokenizer_fingerprint" not in str(refused.value)
    with pytest.raises(ValueError, match="data_seed"):
        loader(
            apply_overrides(cfg, ["data.seed=7"]),
            text,
            info.__class__(**{**info.__dict__, "data_seed": 7}),
            cache_dir,
        )
    with pytest.raises(ValueError, match="cache_info"):
        loader(cfg, text, None, cache_dir)


def test_a_bf16_cache_is_stored_in_bf16_and_fits_a_run_without_the_vit(setup, tmp_path):
    """Encoded in bf16 (as on a GPU): stored and read back as bf16, half of fp32; a run
    from the cache builds its tokenizer without the ViT and its expected info matches."""
    from safetensors.torch import load_file

    cfg, video_tokenizer, _, _, _, text = setup
    tok_cfg = dataclasses.asdict(cfg.video_tokenizer)
    encoder = copy.deepcopy(video_tokenizer).to(torch.bfloat16)
    cache_dir = tmp_path / "bf16"
    build_feature_cache(
        cfg.data, encoder, expected_info(encoder, tok_cfg, cfg.data), cache_dir, splits=("val",)
    )
    assert json.loads((cache_dir / "cache.json").read_text())["encode_dtype"] == "bfloat16"
    files = list(cache_dir.rglob("*.safetensors"))
    assert files and all(load_file(f)["feats"].dtype == torch.bfloat16 for f in files)

    seed_everything(int(cfg.train.seed))  # as the trainer builds it
    run_tokenizer = build_video_tokenizer(cfg.video_tokenizer, cached_features=True).to(torch.bfloat16)
    assert run_tokenizer.frame_encoder is None
    run_info = expected_info(run_tokenizer, tok_cfg, cfg.data)
    cached_cfg = apply_overrides(cfg, [f"data.feature_cache={cache_dir}"])
    vt = cached_cfg.video_tokenizer
    val = build_loader(cached_cfg.data, text, vt.num_tokens, vt.frames_per_clip, vt.input_size, split="val",
                       cache_info=run_info)  # fmt: skip
    batch = next(iter(val))
    assert batch["video_feats"].dtype == torch.bfloat16


def test_a_cache_fingerprinted_whole_is_refused_with_a_hint(setup, tmp_path):
    """Caches written before the ViT was fingerprinted apart: the message says to rebuild."""
    _, _, info, _, _, _ = setup
    fields = dataclasses.asdict(info)
    del fields["frame_encoder_fingerprint"]
    fields["tokenizer_fingerprint"] = "0" * 20
    (tmp_path / "cache.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="covers the ViT.*rebuild it"):
        FeatureCache(tmp_path).check(info)


@pytest.mark.slow
def test_benchmark_reports_both_step_times_and_the_ratio(monkeypatch, capsys):
    from tests import helpers

    # in this process: an interpreter of its own would first import torch and transformers again
    bench = helpers.load_tool("tools/bench/feature_cache.py")
    monkeypatch.setattr(sys, "argv", ["feature_cache.py", "--steps", "2", "--videos", "4"])
    bench.main()
    out = capsys.readouterr().out
    assert "step time from frames" in out and "step time from cache" in out
    ratio = float(out.split("ratio cached/uncached :")[1].split()[0])
    assert ratio > 0


def test_features_command_builds_a_cache_the_loader_accepts(setup, tmp_path):
    """The README command, on the default device choice (CPU here)."""
    from data_recipes.__main__ import main

    cfg, video_tokenizer, info, _, counts, text = setup
    torch.manual_seed(123)  # whatever the global RNG holds, the command seeds from train.seed
    out = tmp_path / "cache"
    assert main(["features", "--out", str(out), "--", f"data.root={cfg.data.root}"]) == 0
    assert len(list(out.rglob("*.safetensors"))) == counts["written"]
    assert next(iter(loader(cfg, text, info, out)))["video_feats"].shape[-2:] == (
        info.tokens_per_clip,
        info.feature_dim,
    )


def test_a_source_without_a_usable_sample_is_an_error_naming_it(setup, tmp_path):
    import shutil

    from divot_llm.data.sources import DataError

    cfg, video_tokenizer, info, _, _, _ = setup  # video_comp alone: nothing to encode
    data = tmp_path / "data"
    shutil.copytree(cfg.data.root, data)
    (data / "annotations" / "video_caption.jsonl").write_text(
        '{"video": "videos/gone.mp4", "caption": "x"}\n'
    )
    data_cfg = compose_config([f"data.root={data}", "data.num_workers=0", "~data.sources.video_gen",
                               "~data.sources.image_comp", "~data.sources.image_gen"]).data  # fmt: skip
    with pytest.raises(DataError, match="train source video_comp has no usable sample.*missing_file 1"):
        build_feature_cache(data_cfg, video_tokenizer, info, tmp_path / "cache", splits=("train",))
