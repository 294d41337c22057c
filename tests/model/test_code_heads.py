"""The code heads (model.head=fsq_factorized|fsq_flat): their likelihoods against direct
cross-entropies, sampling options, classifier-free guidance, the head/tokenizer checks,
and a DivotLLM over code digits trained on batches of the real sequence builder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from divot_llm.data.collate import collate
from divot_llm.data.sequences import SequenceBuilder, sequence_example
from divot_llm.export.verify import compare, random_features, reference_outputs, verification_batches
from divot_llm.model import (
    FactorizedCodeHead,
    FlatCodeHead,
    build_divot_llm,
    build_video_head,
    generate_features,
    guided_logits,
    load_release,
    read_agent_file,
    sample_logits,
    save_release,
)
from divot_llm.text import QUERY, generation_prompt
from divot_llm.tokenizers.codes import digits_to_index, index_to_digits
from tests.model.samples import perturb_trainable

LEVELS = [3, 4, 2]
HEADS = {"fsq_factorized": FactorizedCodeHead, "fsq_flat": FlatCodeHead}


def code_cfg(tiny_cfg, head: str):
    return dataclasses.replace(tiny_cfg.model, head=head)


def test_factorized_nll_is_the_sum_of_digit_cross_entropies_and_the_flat_nll_of_summed_logits():
    gen = torch.Generator().manual_seed(0)
    factorized, flat = FactorizedCodeHead(LEVELS), FlatCodeHead(LEVELS)
    params_tp = torch.randn(5, sum(LEVELS), generator=gen)  # 5 tokens
    target_td = random_features((5, len(LEVELS)), LEVELS, gen)
    per_level = torch.split(params_tp, LEVELS, dim=-1)
    expected_t = sum(
        F.cross_entropy(logits, target_td[:, i].long(), reduction="none")
        for i, logits in enumerate(per_level)
    )
    nll_t = factorized.nll(params_tp, target_td)
    torch.testing.assert_close(nll_t, expected_t)
    # flat logits of code (d0, d1, d2) = l0[d0] + l1[d1] + l2[d2]; digit 0 least significant,
    # so the code is the row-major index of the (L2, L1, L0) grid
    l0, l1, l2 = per_level
    flat_tp = (l0[:, None, None, :] + l1[:, None, :, None] + l2[:, :, None, None]).reshape(5, -1)
    torch.testing.assert_close(flat.nll(flat_tp, target_td), nll_t)
    index_t = digits_to_index(target_td, LEVELS)
    torch.testing.assert_close(
        flat.nll(flat_tp, target_td), F.cross_entropy(flat_tp, index_t, reduction="none")
    )
    assert torch.equal(index_t, target_td[:, 0] + 3 * target_td[:, 1] + 12 * target_td[:, 2])
    assert torch.equal(index_to_digits(torch.arange(24), LEVELS), torch.cartesian_prod(
        torch.arange(2.0), torch.arange(4.0), torch.arange(3.0)).flip(-1))  # fmt: skip


@pytest.mark.parametrize("head_class", list(HEADS.values()), ids=list(HEADS))
def test_top_1_and_a_cold_temperature_sample_the_prediction(head_class):
    head = head_class(LEVELS)
    params = torch.randn(2, 6, head.param_dim, generator=torch.Generator().manual_seed(1))
    predicted = head.predict(params)
    assert predicted.shape == (2, 6, len(LEVELS))
    assert torch.equal(head.sample(params, top_k=1, generator=torch.Generator().manual_seed(2)), predicted)
    assert torch.equal(
        head.sample(params, temperature=1e-4, generator=torch.Generator().manual_seed(2)), predicted
    )
    warm = head.sample(params, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(warm, predicted)  # 12 draws of 3 codes at temperature 1
    assert (warm >= 0).all() and (warm < torch.tensor(LEVELS, dtype=torch.float32)).all()


def test_sample_logits_follows_temperature_and_top_k():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0]).expand(20000, 4)
    gen = torch.Generator().manual_seed(0)
    for temperature in (1.0, 2.0):
        drawn = sample_logits(logits, temperature, 0, gen)
        freq = torch.bincount(drawn, minlength=4).float() / len(drawn)
        torch.testing.assert_close(freq, (logits[0] / temperature).softmax(-1), atol=0.015, rtol=0)
    top2 = torch.bincount(sample_logits(logits, 1.0, 2, gen), minlength=4).float() / 20000
    torch.testing.assert_close(top2, torch.tensor([2.0, 1.0, -1e9, -1e9]).softmax(-1), atol=0.015, rtol=0)


def test_guidance_combines_logits():
    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 7, generator=gen), torch.randn(3, 7, generator=gen)
    torch.testing.assert_close(guided_logits(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guided_logits(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(guided_logits(cond, uncond, 3.0), 3.0 * cond - 2.0 * uncond)


def test_a_head_that_does_not_fit_the_tokenizer_fails_with_one_message(tiny_cfg):
    for head, levels in (("gmm", [8, 8]), ("fsq_factorized", None), ("fsq_flat", None)):
        with pytest.raises(ValueError, match=f"model.head={head} does not fit the video tokenizer") as err:
            build_video_head(code_cfg(tiny_cfg, head), 2, levels)
        assert "video_tokenizer gives" in str(err.value)
    with pytest.raises(
        ValueError, match="model.head=fsq_flat .* 262144 codes .* use model.head=fsq_factorized"
    ):
        build_video_head(code_cfg(tiny_cfg, "fsq_flat"), 6, [8] * 6)
    assert build_video_head(code_cfg(tiny_cfg, "fsq_flat"), 5, [8] * 5).param_dim == 32768


def mixed_batch(tok, n: int, levels: list[int], seed: int = 0) -> dict:
    """A comprehension sample with two clips and a generation sample, from the real
    sequence builder and collate, over random code digits."""
    builder = SequenceBuilder(tok, n)
    rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)

    def example(task: str, clips: int, **text) -> dict:
        seq = builder.build(task, "video", clips, 4096, rng, **text)
        feats = random_features((clips, n, len(levels)), levels, gen)
        return sequence_example(seq, task, "video_feats", feats, source="test", key=task)

    comp = example("sft_comp", 2, turns=[("What is shown?", "A red circle moving left.")])
    gen_ex = example("pretrain_gen", 1, captions=["a blue square sliding up"])
    return collate([comp, gen_ex], tok.pad_id)


@pytest.mark.parametrize("head", list(HEADS))
def test_a_divot_llm_over_codes_trains_on_a_mixed_batch(head, tiny_cfg, text_tokenizer):
    n, levels = tiny_cfg.video_tokenizer.num_tokens, [4, 3, 5, 2]
    torch.manual_seed(0)
    model = build_divot_llm(code_cfg(tiny_cfg, head), feature_tokens=n, feature_dim=4, feature_levels=levels)
    assert isinstance(model.video_head, HEADS[head])
    batch = mixed_batch(text_tokenizer, n, levels)
    keys = ("input_ids", "attention_mask", "labels", "video_feats", "embeds_cmp_mask", "embeds_gen_mask",
            "ids_cmp_mask", "ids_gen_mask")  # fmt: skip
    out = model(**{k: batch[k] for k in keys})
    assert torch.isfinite(out.total_loss) and out.lm_loss > 0
    # the head's loss is its NLL of the generation clip's digits, averaged over the queries
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["video_feats"], batch["embeds_cmp_mask"].bool(),
                             batch["ids_cmp_mask"].bool())  # fmt: skip
        hidden = model.hidden_states(embeds, batch["attention_mask"])
        params = model.query_head_params(hidden, batch["ids_gen_mask"].bool())
    target = batch["video_feats"][batch["embeds_gen_mask"].bool()]
    torch.testing.assert_close(out.gmm_loss, model.video_head.nll(params, target).mean())
    out.total_loss.backward()
    for module in (model.input_resampler, model.output_resampler):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)
    # a batch without generation still calls the output module (every rank gathers it under ZeRO)
    model.zero_grad()
    comp = {k: batch[k][:1] for k in keys}
    comp["embeds_gen_mask"] = torch.zeros_like(comp["embeds_gen_mask"])
    out = model(**comp)
    out.total_loss.backward()
    assert out.gmm_loss == 0 and all(p.grad is not None for p in model.output_resampler.parameters())


def test_guided_generation_samples_the_combined_logits(tiny_cfg, text_tokenizer):
    tok, n, levels = text_tokenizer, tiny_cfg.video_tokenizer.num_tokens, [4, 3, 5, 2]
    torch.manual_seed(0)
    model = build_divot_llm(code_cfg(tiny_cfg, "fsq_factorized"), feature_tokens=n, feature_dim=4,
                            feature_levels=levels).eval()  # fmt: skip
    perturb_trainable(model, scale=0.2)
    prompt = [tok.bos_id, *tok.encode(generation_prompt("a blue square"))]
    uncond = [tok.bos_id, *tok.encode(generation_prompt(""))]
    unguided = generate_features(model, tok, [prompt], max_new_tokens=0, sample=False)
    tail = unguided.sequences[0][len(prompt) :]  # <vid> <frame> + N queries

    def params(seq):  # the sequence alone, its queries marked as the query block
        ids = torch.tensor([[*seq, *tail]])
        mask = torch.ones_like(ids)
        mask[0, -n:] = QUERY
        with torch.no_grad():
            return model.query_head_params(model.hidden_states(model.embed(ids), mask), mask == QUERY)[0]

    guided = guided_logits(params(prompt), params(uncond), 3.0)
    result = generate_features(model, tok, [prompt], max_new_tokens=0, sample=False, cfg_scale=3.0,
                               uncond_prompt=uncond)  # fmt: skip
    assert torch.equal(result.feats[0], model.video_head.predict(guided))
    assert torch.equal(unguided.feats[0], model.video_head.predict(params(prompt)))
    assert not torch.equal(result.feats, unguided.feats)
    with pytest.raises(ValueError, match="needs the unconditional prompt"):
        generate_features(model, tok, [prompt], max_new_tokens=0, cfg_scale=3.0)
    with pytest.raises(ValueError, match="var_scale does not apply to a code head"):
        generate_features(model, tok, [prompt], max_new_tokens=0, var_scale=0.5)


@pytest.mark.parametrize("head", list(HEADS))
def test_merge_verification_passes_for_a_code_head_release(head, tiny_cfg, text_tokenizer, tmp_path):
    """What ``divot-merge --verify`` does, in process: the unmerged model and the release
    loaded back agree on verification batches of valid random digits."""
    n, levels = tiny_cfg.video_tokenizer.num_tokens, [4, 3, 5, 2]
    cfg = code_cfg(tiny_cfg, head)
    torch.manual_seed(0)
    model = build_divot_llm(cfg, feature_tokens=n, feature_dim=4, feature_levels=levels)
    perturb_trainable(model, scale=0.2)
    batches = verification_batches(text_tokenizer, model, feature_levels=levels)
    feats = torch.cat([b["video_feats"].flatten(0, -2) for b in batches])
    assert torch.equal(feats, feats.round()) and feats.min() == 0
    assert torch.equal(
        feats.amax(dim=0), torch.tensor(levels, dtype=torch.float32) - 1
    )  # every level reached
    expected = reference_outputs(model, batches)
    model.merge_lora()
    save_release(model, tmp_path / "release")
    assert sorted(read_agent_file(tmp_path / "release" / "agent")) == [
        "input_resampler.embedding.weight", "output_resampler.bias", "output_resampler.weight"]  # fmt: skip
    loaded = load_release(tmp_path / "release", cfg, feature_tokens=n, feature_dim=4, feature_levels=levels)
    comparisons = compare(expected, reference_outputs(loaded, batches), torch.float32)
    assert [c.name for c in comparisons] == ["logits", "head_params"]
    assert all(c.ok and c.max_abs_diff < 1e-4 for c in comparisons), [str(c) for c in comparisons]
