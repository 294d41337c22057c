"""model.resampler.kind=queries: M learned queries read a clip's N feature tokens, N
position queries read the M query states back; the LLM's sequences carry M tokens per
clip while features, losses and samples stay N per clip, for any N."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from divot_llm.config.schema import ResamplerConfig
from divot_llm.data.collate import collate
from divot_llm.data.sequences import SequenceBuilder, sequence_example
from divot_llm.export.verify import compare, random_features, reference_outputs, verification_batches
from divot_llm.model import (
    InputQueryResampler,
    OutputQueryResampler,
    build_divot_llm,
    generate_features,
    generate_text,
    load_release,
    read_agent_file,
    save_release,
)
from divot_llm.text import generation_prompt, video_tokens
from tests.model.samples import perturb_trainable

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "video_feats", "embeds_cmp_mask", "embeds_gen_mask",
              "ids_cmp_mask", "ids_gen_mask")  # fmt: skip


def queries_cfg(tiny_cfg, num_queries: int, head: str = "gmm"):
    resampler = ResamplerConfig(kind="queries", num_queries=num_queries, heads=2, layers=2)
    return dataclasses.replace(tiny_cfg.model, head=head, resampler=resampler)


def test_queries_map_n_features_to_m_tokens_and_back_with_positions():
    n, m, d, h, p = 10, 3, 5, 8, 7
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    into = InputQueryResampler(nn.Linear(d, h), feature_tokens=n, num_queries=m, hidden=h, heads=2, layers=2)
    out_of = OutputQueryResampler(
        nn.Linear(h, p), feature_tokens=n, num_queries=m, hidden=h, heads=2, layers=2
    )
    feats_gnd = torch.randn(4, n, d, generator=gen)
    tokens_gmh = into(feats_gnd)
    params_gnp = out_of(tokens_gmh)
    assert tokens_gmh.shape == (4, m, h) and params_gnp.shape == (4, n, p)
    # each feature token has its own grid position: moving features to other positions
    # changes what the queries read, moving the position embeddings along does not
    perm = torch.randperm(n, generator=gen)
    assert not torch.allclose(into(feats_gnd[:, perm]), tokens_gmh, atol=1e-4)
    with torch.no_grad():
        into.positions.copy_(into.positions[perm])
    torch.testing.assert_close(into(feats_gnd[:, perm]), tokens_gmh)
    # and each output position its own query: the N predictions differ
    assert (params_gnp[:, 1:] - params_gnp[:, :1]).abs().amax() > 1e-3
    with pytest.raises(ValueError, match=r"input resampler: expected \(G, 10, dim\)"):
        into(torch.randn(4, n + 1, d))
    with pytest.raises(ValueError, match="model.resampler.heads=3 must divide the LLM's hidden size 8"):
        InputQueryResampler(nn.Linear(d, h), feature_tokens=n, num_queries=m, hidden=h, heads=3, layers=1)


def mixed_batch(tok, m: int, n: int, levels: list[int] | None, dim: int, seed: int = 0) -> dict:
    """A comprehension sample with two clips and a generation sample from the real
    sequence builder (M tokens per clip) and collate, over random (N, D) clip features."""
    builder = SequenceBuilder(tok, m)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)

    def example(task: str, clips: int, **text) -> dict:
        seq = builder.build(task, "video", clips, 4096, rng, **text)
        feats = random_features((clips, n, dim), levels, gen)
        return sequence_example(seq, task, "video_feats", feats, source="test", key=task)

    comp = example("sft_comp", 2, turns=[("What is shown?", "A red circle moving left.")])
    gen_ex = example("pretrain_gen", 1, captions=["a blue square sliding up"])
    return collate([comp, gen_ex], tok.pad_id)


@pytest.mark.parametrize("head", ["gmm", "fsq_factorized"])
def test_a_divot_llm_with_queries_trains_on_a_mixed_batch(head, tiny_cfg, text_tokenizer):
    n, m = tiny_cfg.video_tokenizer.num_tokens, 5  # 8 feature tokens, 5 LLM tokens per clip
    levels = [4, 3, 5, 2] if head != "gmm" else None
    dim = len(levels) if levels else tiny_cfg.video_tokenizer.feature_dim
    torch.manual_seed(0)
    model = build_divot_llm(
        queries_cfg(tiny_cfg, m, head), feature_tokens=n, feature_dim=dim, feature_levels=levels
    )
    assert (model.tokens_per_clip, model.feature_tokens) == (m, n)
    batch = mixed_batch(text_tokenizer, m, n, levels, dim)
    assert batch["ids_cmp_mask"].sum() == 2 * m and batch["ids_gen_mask"].sum() == m
    out = model(**{k: batch[k] for k in MODEL_KEYS})
    assert torch.isfinite(out.total_loss) and out.lm_loss > 0
    # the head's loss: its NLL of the generation clip's N feature tokens, from M query states
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["video_feats"], batch["embeds_cmp_mask"].bool(),
                             batch["ids_cmp_mask"].bool())  # fmt: skip
        params = model.query_head_params(model.hidden_states(embeds, batch["attention_mask"]),
                                         batch["ids_gen_mask"].bool())  # fmt: skip
    target = batch["video_feats"][batch["embeds_gen_mask"].bool()]
    assert params.shape[:2] == target.shape[:2] == (1, n)
    torch.testing.assert_close(out.gmm_loss, model.video_head.nll(params, target).mean())
    out.total_loss.backward()
    for learned in (
        model.input_resampler.queries,
        model.input_resampler.positions,
        model.output_resampler.positions,
    ):
        assert torch.isfinite(learned.grad).all() and learned.grad.abs().sum() > 0
    # a batch without generation still calls the output module (every rank gathers it under ZeRO)
    model.zero_grad()
    comp = {k: batch[k][:1] for k in MODEL_KEYS}
    comp["embeds_gen_mask"] = torch.zeros_like(comp["embeds_gen_mask"])
    model(**comp).total_loss.backward()
    assert all(p.grad is not None for p in model.output_resampler.parameters())


def test_deepspeed_zero3_steps_with_queries_on_single_task_batches(
    ds_process_group, tiny_cfg, text_tokenizer
):
    """ZeRO-3 gathers the resampler's parameters (its own tables and its attention layers)
    on a rank whose batch leaves either side idle, and the steps train them."""
    import deepspeed

    n, d, m = tiny_cfg.video_tokenizer.num_tokens, tiny_cfg.video_tokenizer.feature_dim, 5
    torch.manual_seed(0)
    model = build_divot_llm(queries_cfg(tiny_cfg, m), feature_tokens=n, feature_dim=d)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 3, "ignore_unused_parameters": False}}  # fmt: skip
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    batch = {k: v for k, v in mixed_batch(text_tokenizer, m, n, None, d).items() if k in MODEL_KEYS}
    with torch.no_grad():
        before = engine(**batch).gmm_loss.item()
    for rows in (slice(0, 1), slice(1, 2)):  # comprehension only, then generation only
        loss = engine(**{k: v[rows] for k, v in batch.items()}).total_loss
        engine.backward(loss)
        engine.step()
    with torch.no_grad():
        after = engine(**batch).gmm_loss.item()
    assert math.isfinite(after) and after != before


def test_more_feature_tokens_than_frame_tokens_generate_and_comprehend(tiny_cfg, text_tokenizer):
    """N = 300 > 256 <frame_i> tokens: 4 queries carry each clip through the LLM."""
    tok, n, d = text_tokenizer, 300, tiny_cfg.video_tokenizer.feature_dim
    torch.manual_seed(0)
    model = build_divot_llm(queries_cfg(tiny_cfg, 4), feature_tokens=n, feature_dim=d).eval()
    prompt = [tok.bos_id, *tok.encode(generation_prompt("a blue square"))]
    generated = generate_features(model, tok, [prompt], max_new_tokens=0)
    assert generated.feats.shape == (1, n, d) and torch.isfinite(generated.feats).all()
    assert generated.sequences[0][-4:] == tok.frame_token_ids(4)
    prompt = [tok.bos_id, *tok.encode(video_tokens(1, 4))]  # 4 placeholders for the 300 features
    answer = generate_text(model, tok, [prompt], video_feats=[generated.feats], max_new_tokens=3)
    assert 1 <= len(answer[0]) <= 3


def test_merge_verification_passes_with_queries(tiny_cfg, text_tokenizer, tmp_path):
    """What ``divot-merge --verify`` does, in process: the unmerged model and the release
    loaded back agree; the queries and position tables travel in agent/."""
    n, d = tiny_cfg.video_tokenizer.num_tokens, tiny_cfg.video_tokenizer.feature_dim
    cfg = queries_cfg(tiny_cfg, 3)
    torch.manual_seed(0)
    model = build_divot_llm(cfg, feature_tokens=n, feature_dim=d)
    perturb_trainable(model, scale=0.2)
    batches = verification_batches(text_tokenizer, model)
    assert [b["video_feats"].shape[-2:] for b in batches] == [(n, d)] * 2
    assert [int(b["ids_cmp_mask"].sum() + b["ids_gen_mask"].sum()) for b in batches] == [3 * 3, 3]
    expected = reference_outputs(model, batches)
    model.merge_lora()
    save_release(model, tmp_path / "release")
    agent = read_agent_file(tmp_path / "release" / "agent")
    assert {"input_resampler.queries", "input_resampler.positions", "output_resampler.positions",
            "input_resampler.token_module.proj.0.weight", "output_resampler.token_module.proj.2.bias",
            "output_resampler.blocks.1.out.weight"} <= set(agent)  # fmt: skip
    loaded = load_release(tmp_path / "release", cfg, feature_tokens=n, feature_dim=d)
    comparisons = compare(expected, reference_outputs(loaded, batches), torch.float32)
    assert [c.name for c in comparisons] == ["logits", "head_params"]
    assert all(c.ok and c.max_abs_diff < 1e-4 for c in comparisons), [str(c) for c in comparisons]
