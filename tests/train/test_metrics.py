"""The FLOP formula against torch's own FLOP counter on a real forward + backward."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from divot_llm.model import build_divot_llm
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.train.metrics import FlopModel, TokenizerFlops, device_peak, tokenizer_flops
from tests.train.conftest import hand_batches, tiny_cfg


@pytest.mark.parametrize("stage", ["pretrain", "sft_comp", "sft_gen"])
@pytest.mark.parametrize("sample", [0, 1])  # 0: comprehension, 1: generation (bidirectional queries)
def test_formula_matches_counted_flops_of_a_training_step(mistral_tokenizer_dir, stage, sample):
    """One unpadded sample: the formula (frozen 4N, LoRA 6N, attention 12·L·d·T², LM head at
    supervised positions only, projections) equals what torch counts within 2% (the input
    projection's first layer needs no input gradient; the formula ignores that). Eager
    attention, because torch's counter does not see the CPU flash-attention kernel."""
    cfg = tiny_cfg(f"stage={stage}", "stage.init_from=null", "model.llm.attn_implementation=eager")
    assert_formula_matches_counted_flops(cfg, mistral_tokenizer_dir, sample)


@pytest.mark.parametrize("sample", [0, 1])
def test_formula_counts_learned_queries(mistral_tokenizer_dir, sample):
    """model.resampler.kind=queries: the modules' attention is counted per clip as well."""
    cfg = tiny_cfg("model.llm.attn_implementation=eager", "model.resampler.kind=queries",
                   "model.resampler.num_queries=8")  # fmt: skip
    assert_formula_matches_counted_flops(cfg, mistral_tokenizer_dir, sample)


def assert_formula_matches_counted_flops(cfg, mistral_tokenizer_dir, sample: int) -> None:
    model = build_divot_llm(
        cfg.model,
        feature_tokens=8,
        feature_dim=16,
        train_input_proj=cfg.stage.train_input_proj,
        train_output_proj=cfg.stage.train_output_proj,
    )
    pair = hand_batches(mistral_tokenizer_dir, 8, 16, count=1)[0]
    batch = {k: v[sample : sample + 1] for k, v in pair.items()}
    length = int((batch["attention_mask"] != 0).sum())
    width = pair["input_ids"].shape[1]
    batch = {k: v[:, :length] if v.dim() == 2 and v.shape[1] == width else v for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        model(**batch).total_loss.backward()
    predicted, hardware = FlopModel.from_model(model, TokenizerFlops(), recompute=False).batch_flops(batch)
    assert predicted == hardware
    assert predicted == pytest.approx(counter.get_total_flops(), rel=0.02)


def test_recompute_adds_one_body_forward(mistral_tokenizer_dir):
    cfg = tiny_cfg()
    model = build_divot_llm(cfg.model, feature_tokens=8, feature_dim=16)
    batch = hand_batches(mistral_tokenizer_dir, 8, 16, count=1)[0]
    plain = FlopModel.from_model(model, TokenizerFlops(), recompute=False)
    model_flops, hardware = FlopModel.from_model(model, TokenizerFlops(), recompute=True).batch_flops(batch)
    assert model_flops == plain.batch_flops(batch)[0]
    tokens = (batch["attention_mask"] != 0).sum(dim=1).double()
    body = plain.frozen_body + plain.lora_body
    extra = float((tokens * 2 * body).sum() + (4 * plain.layers * plain.hidden * tokens**2).sum())
    assert hardware - model_flops == pytest.approx(extra)


def test_tokenizer_flops_count_the_clips_encoded_in_the_step(mistral_tokenizer_dir):
    """A batch of cached features encodes nothing: MFU counts no tokenizer FLOPs. The same
    batch from frames counts each real clip; a still counts less than a video."""
    cfg = tiny_cfg()
    model = build_divot_llm(cfg.model, feature_tokens=8, feature_dim=16)
    cached = hand_batches(mistral_tokenizer_dir, 8, 16, count=1)[0]  # 3 real clips, 1 padded slot
    counts = FlopModel.from_model(model, TokenizerFlops(video=5e6, still=1e6), recompute=False)
    llm_only = FlopModel.from_model(model, TokenizerFlops(), recompute=False).batch_flops(cached)[0]
    assert counts.batch_flops(cached)[0] == llm_only

    real = int((cached["embeds_cmp_mask"] | cached["embeds_gen_mask"]).sum())
    videos_gf = torch.randint(  # the loader's frames: only the real clips, (G, F, 3, S, S)
        0, 256, (real, 5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    stills_gf = videos_gf[:, :1].expand_as(videos_gf).clone()  # images: one frame 5 times
    batch = {k: v for k, v in cached.items() if k != "video_feats"}
    from_videos = counts.batch_flops({**batch, "frames": videos_gf})[0]
    from_stills = counts.batch_flops({**batch, "frames": stills_gf})[0]
    assert real == 3
    assert from_videos - llm_only == 3 * 5e6  # padded clip slots are not encoded
    assert from_stills - llm_only == 3 * 1e6


def test_tokenizer_flops_are_counted_and_cpu_peak_is_labelled_as_measured():
    tokenizer = build_video_tokenizer(tiny_cfg().video_tokenizer)
    counted = tokenizer_flops(tokenizer, "cpu")
    assert counted.video > counted.still > 1e6  # a still runs the ViT on one frame
    peak = device_peak(torch.device("cpu"), torch.float32, None)
    assert peak.flops > 1e8 and "measured" in peak.source
    assert device_peak(torch.device("cpu"), torch.float32, 312.0).flops == 312e12
