"""Release layout save/load, and peft-form training state dicts (old names included)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from divot_llm.model import (
    build_divot_llm,
    load_release,
    load_training_state_dict,
    read_agent_file,
    save_release,
)
from tests.model.samples import collate, comprehension_sample, generation_sample, perturb_trainable

AGENT_KEYS = [
    f"{head}_resampler.proj.{i}.{p}"
    for head in ("input", "output")
    for i in (0, 2)
    for p in ("weight", "bias")
]


@pytest.fixture
def batch(text_tokenizer, feat_shape):
    n, d = feat_shape
    gen = torch.Generator().manual_seed(5)
    samples = [
        comprehension_sample(text_tokenizer, n, torch.randn(2, n, d, generator=gen), "a red circle"),
        generation_sample(text_tokenizer, n, torch.randn(1, n, d, generator=gen), "a blue square moving up"),
    ]
    return collate(samples, text_tokenizer.pad_id)


def logits_and_gmm(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (B, T, V) and the GMM parameters at the queries (G, N, P)."""
    with torch.no_grad():
        embeds = model.embed(
            batch["input_ids"], batch["video_feats"], batch["embeds_cmp_mask"], batch["ids_cmp_mask"]
        )
        hidden = model.hidden_states(embeds, batch["attention_mask"])
        return model.causal_lm.lm_head(hidden), model.query_head_params(hidden, batch["ids_gen_mask"])


@pytest.fixture
def trained(make_model):
    model = make_model()
    perturb_trainable(model)
    return model.eval()


@pytest.mark.parametrize("agent_format", ["bin", "safetensors"])
def test_release_save_then_load_gives_identical_logits_and_head_params(
    trained, batch, tiny_cfg, feat_shape, text_tokenizer, tmp_path, agent_format
):
    logits, gmm = logits_and_gmm(trained, batch)
    with pytest.raises(ValueError, match="merge_lora"):
        save_release(trained, tmp_path / "unmerged")
    trained.merge_lora()
    save_release(trained, tmp_path / "release", tokenizer=text_tokenizer, agent_format=agent_format)

    n, d = feat_shape
    loaded = load_release(tmp_path / "release", tiny_cfg.model, feature_tokens=n, feature_dim=d)
    new_logits, new_gmm = logits_and_gmm(loaded, batch)
    torch.testing.assert_close(new_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_gmm, gmm, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training

    # the layout: an HF folder with the grown vocabulary and exactly the 8 agent tensors
    llm_dir, agent_dir = tmp_path / "release" / "llm", tmp_path / "release" / "agent"
    assert sorted(load_file(next(llm_dir.glob("*.safetensors")))) == sorted(trained.causal_lm.state_dict())
    assert (llm_dir / "tokenizer.model").is_file()
    agent = read_agent_file(agent_dir)
    assert sorted(agent) == sorted(AGENT_KEYS)
    h, p = trained.causal_lm.config.hidden_size, trained.video_head.param_dim
    assert agent["input_resampler.proj.0.weight"].shape == (h, d)
    assert agent["input_resampler.proj.2.weight"].shape == (h, h)
    assert agent["output_resampler.proj.0.weight"].shape == (p, h)
    assert agent["output_resampler.proj.2.bias"].shape == (p,)


def test_sft_stage_starts_from_a_release(trained, batch, tiny_cfg, feat_shape, tmp_path):
    """SFT: the merged release is the base, a fresh LoRA (B = 0) goes on top, heads come
    from agent/ and the stage's frozen head is frozen; outputs equal the release's."""
    logits, gmm = logits_and_gmm(trained, batch)
    trained.merge_lora()
    save_release(trained, tmp_path / "release")
    n, d = feat_shape
    sft = build_divot_llm(
        tiny_cfg.model,
        feature_tokens=n,
        feature_dim=d,
        train_input_proj=False,
        init_from=tmp_path / "release",
    ).eval()
    assert sft.causal_lm.config.vocab_size == 32262
    assert not any(p.requires_grad for p in sft.input_resampler.parameters())
    assert any("lora_B" in name and p.requires_grad for name, p in sft.llm.named_parameters())
    new_logits, new_gmm = logits_and_gmm(sft, batch)
    torch.testing.assert_close(new_logits, logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_gmm, gmm, atol=1e-5, rtol=1e-5)


def test_training_state_dict_with_old_peft_names_loads(trained, batch, make_model):
    logits, gmm = logits_and_gmm(trained, batch)
    state = trained.state_dict()
    # peft < 0.7 names: the wrapped base weight had no "base_layer" component
    old = {k.replace(".base_layer.", "."): v for k, v in state.items()}
    assert "llm.base_model.model.model.layers.0.self_attn.q_proj.weight" in old
    fresh = make_model(seed=7).eval()
    missing = load_training_state_dict(fresh, old)
    assert missing == []
    new_logits, new_gmm = logits_and_gmm(fresh, batch)
    torch.testing.assert_close(new_logits, logits)
    torch.testing.assert_close(new_gmm, gmm)


def test_training_state_dict_may_omit_frozen_but_not_trainable_weights(trained, make_model):
    state = trained.state_dict()
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    only_trainable = {k: v for k, v in state.items() if k in trainable}
    fresh = make_model(seed=7)
    missing = load_training_state_dict(fresh, only_trainable)
    assert missing and not set(missing) & trainable
    with pytest.raises(ValueError, match="trainable parameters are missing"):
        load_training_state_dict(fresh, {k: v for k, v in only_trainable.items() if "lora_A" not in k})
    with pytest.raises(ValueError, match="not parameters of this model"):
        load_training_state_dict(fresh, {**state, "llm.extra.weight": torch.zeros(1)})
