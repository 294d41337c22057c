"""`divot-data latent-stats`: the per-channel statistics of a KL VidTok's latents over the
clips the LLM stages sample, stored with the tokenizer so that its features come out
normalised; bad records are skipped and counted."""

from __future__ import annotations

import dataclasses
import json
import shutil

import torch

from data_recipes.__main__ import main
from divot_llm.config import compose_config
from divot_llm.data.latent_stats import ChannelMoments, latent_stats
from divot_llm.data.loader import build_loader
from divot_llm.text import DivotTextTokenizer
from divot_llm.tokenizers import build_video_tokenizer

# The tiny KL VidTok on 9-frame clips (3 latent frames), sampled from 32-frame windows
# every 4th frame (+ the last): the settings an LLM stage over it uses.
OVERRIDES = [
    "video_tokenizer.frames_per_clip=9",
    "data.frames_per_window=32",
    "data.num_workers=0",
    "data.infinite=false",
]


def test_latent_stats_are_the_clips_statistics_and_normalise_the_features(
    small_synthetic, mistral_tokenizer_dir, tmp_path, capsys
):
    data = tmp_path / "data"
    shutil.copytree(small_synthetic, data)
    with (data / "annotations" / "video_caption.jsonl").open("a") as file:
        file.write('{"video": "videos/gone.mp4", "caption": "a red circle"}\n')
    out = tmp_path / "stats"
    overrides = ["video_tokenizer=vidtok_tiny", *OVERRIDES, f"data.root={data}"]
    args = ["latent-stats", "--out", str(out), "--workers", "0", "--batch-clips", "5", "--", *overrides]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert (
        "missing_file 1" in printed
        and f"video_tokenizer.pretrained_path={out / 'video_tokenizer'}" in printed
    )
    record = json.loads((out / "latent_stats.json").read_text())

    # The folder is a tokenizer with the statistics; a config naming it takes them from there.
    cfg = compose_config(overrides)
    tokenizer_cfg = dataclasses.replace(cfg.video_tokenizer, pretrained_path=str(out / "video_tokenizer"))
    assert tokenizer_cfg.latent_mean is None
    tokenizer = build_video_tokenizer(tokenizer_cfg)
    assert (tokenizer.config.latent_mean, tokenizer.config.latent_std) == (record["mean"], record["std"])

    # The same clips through the loader the LLM stages read (the bad record skipped there too).
    text = DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)
    loader = build_loader(
        cfg.data, text, tokenizer.num_tokens, tokenizer.frames_per_clip, tokenizer.input_size
    )
    frames = torch.cat([batch["frames"] for batch in loader]).float() / 127.5 - 1  # (clips, F, 3, S, S)
    assert frames.shape[0] == record["clips"] == record["counts"]["clips"] > 10
    latents_bcthw = tokenizer.encode_latents(frames)
    latents_cn = latents_bcthw.double().transpose(0, 1).flatten(1)
    assert latents_cn.shape[1] == record["positions"]
    torch.testing.assert_close(torch.tensor(record["mean"]), latents_cn.mean(1).float(), rtol=0, atol=1e-5)
    torch.testing.assert_close(
        torch.tensor(record["std"]), latents_cn.std(1, unbiased=False).float(), rtol=0, atol=1e-5
    )
    assert min(record["std"]) > 1e-3  # the test sees real spread, not a constant

    # --max-clips: the first clips read, cut inside a sample where it has to be
    few, few_counts = latent_stats(cfg.data, tokenizer, max_clips=5, batch_clips=2)
    assert (few.clips, few.positions, few_counts["clips"]) == (5, 5 * 3 * 4 * 4, 5) and few.mean != record[
        "mean"
    ]

    feats_bnd = tokenizer.encode(frames)  # (clips, N, C): p = 1, feature d is channel d
    torch.testing.assert_close(feats_bnd.mean(dim=(0, 1)), torch.zeros(4), rtol=0, atol=1e-4)
    torch.testing.assert_close(feats_bnd.std(dim=(0, 1), unbiased=False), torch.ones(4), rtol=0, atol=1e-4)


def test_channel_moments_merge_batches_exactly():
    values = torch.randn(7, 3, 2, 5) * torch.tensor([1.0, 10.0, 0.1]).view(1, 3, 1, 1) + 100.0
    moments = ChannelMoments()
    for chunk in values.split([1, 4, 2]):
        moments.update(chunk)
    mean, std = moments.mean_std()
    values_cn = values.double().transpose(0, 1).flatten(1)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), values_cn.mean(1))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), values_cn.std(1, unbiased=False))


def test_latent_stats_refuses_an_fsq_tokenizer(small_synthetic, tmp_path, capsys):
    args = ["latent-stats", "--out", str(tmp_path), "--", "video_tokenizer=vidtok_tiny_fsq", *OVERRIDES]
    assert main([*args, f"data.root={small_synthetic}"]) == 2
    assert "not a continuous (KL) VidTok" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())
