"""Backbone loading, vocabulary growth (also under ZeRO-3), LoRA and 7B parameter counts."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from divot_llm.config.loading import apply_overrides, compose_config
from divot_llm.model import apply_lora, build_divot_llm, load_backbone, resize_vocab
from divot_llm.text import NUM_ADDED_TOKENS

BASE_VOCAB = 32000
DIVOT_VOCAB = BASE_VOCAB + NUM_ADDED_TOKENS


def check_grown_rows(
    embed_w: torch.Tensor, head_w: torch.Tensor, old_embed_w: torch.Tensor, old_head_w: torch.Tensor
):
    assert embed_w.shape == head_w.shape == (DIVOT_VOCAB, old_embed_w.shape[1])
    assert torch.equal(embed_w[:BASE_VOCAB], old_embed_w)
    assert torch.equal(head_w[:BASE_VOCAB], old_head_w)
    torch.testing.assert_close(embed_w[BASE_VOCAB:], old_embed_w.mean(0).expand(NUM_ADDED_TOKENS, -1))
    torch.testing.assert_close(head_w[BASE_VOCAB:], 3 * old_head_w.mean(0).expand(NUM_ADDED_TOKENS, -1))


def test_vocab_grows_with_mean_rows_and_3x_mean_lm_head_rows(tiny_cfg, tiny_mistral_dir):
    model = load_backbone(tiny_cfg.model.llm, path=tiny_mistral_dir)
    old_embed = model.get_input_embeddings().weight.detach().clone()
    old_head = model.get_output_embeddings().weight.detach().clone()
    assert resize_vocab(model, DIVOT_VOCAB, lm_head_rows_scale=3.0)
    check_grown_rows(
        model.get_input_embeddings().weight, model.get_output_embeddings().weight, old_embed, old_head
    )
    assert model.config.vocab_size == DIVOT_VOCAB
    logits = model(input_ids=torch.tensor([[1, 32002, 32261]])).logits
    assert logits.shape == (1, 3, DIVOT_VOCAB)
    # an SFT base (a merged release) already has the Divot vocabulary: nothing changes
    assert not resize_vocab(model, DIVOT_VOCAB)
    with pytest.raises(ValueError, match="more than the requested"):
        resize_vocab(model, BASE_VOCAB)


def test_vocab_growth_under_zero3(ds_process_group, tiny_cfg):
    """Partitioned parameters (built under zero.Init) are gathered for the growth, and the
    new full-size parameters train in a ZeRO-3 engine."""
    import deepspeed

    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3},
    }
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = load_backbone(tiny_cfg.model.llm)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    assert embed.weight.numel() == 0  # partitioned: no full tensor outside a gather
    with deepspeed.zero.GatheredParameters([embed.weight, head.weight]):
        old_embed, old_head = embed.weight.detach().clone(), head.weight.detach().clone()
    assert resize_vocab(model, DIVOT_VOCAB)

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # a step that keeps the weights
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    ids = torch.tensor([[1, 32002, 32004, 32006, 32261]])
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    embed, head = engine.module.get_input_embeddings(), engine.module.get_output_embeddings()
    with deepspeed.zero.GatheredParameters([embed.weight, head.weight]):
        check_grown_rows(embed.weight, head.weight, old_embed, old_head)


def test_lora_choices_come_from_config(tiny_cfg, tiny_mistral_dir):
    lora_cfg = dataclasses.replace(
        tiny_cfg.model.lora,
        r=4,
        alpha=12,
        dropout=0.0,
        target_modules=["q_proj", "down_proj"],
        modules_to_save=[],
        train_embeddings=False,
    )
    model = apply_lora(load_backbone(tiny_cfg.model.llm, path=tiny_mistral_dir), lora_cfg)
    llm = tiny_cfg.model.llm
    per_layer = 4 * (llm.hidden_size + llm.hidden_size) + 4 * (llm.intermediate_size + llm.hidden_size)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == llm.num_hidden_layers * per_layer
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable)
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == 12 / 4 and q_proj.r["default"] == 4


def test_backbone_from_hf_folder_keeps_its_outputs(tiny_cfg, feat_shape, tiny_mistral_dir):
    """A local HF folder loads with its weights; growing the vocabulary and adding a
    fresh LoRA (B = 0) leave the logits of the base vocabulary unchanged."""
    from transformers import MistralForCausalLM

    cfg = apply_overrides(tiny_cfg, [f"model.llm.path={tiny_mistral_dir}"]).model
    n, d = feat_shape
    model = build_divot_llm(cfg, feature_tokens=n, feature_dim=d).eval()
    reference = MistralForCausalLM.from_pretrained(tiny_mistral_dir).eval()
    ids = torch.tensor([[1, 733, 16289, 28793, 22557]])
    with torch.no_grad():
        ours = model.llm(input_ids=ids).logits
        theirs = reference(input_ids=ids).logits
    torch.testing.assert_close(ours[..., :BASE_VOCAB], theirs)


LORA_7B = 32 * 2_621_440  # r 32 on q,k,v,o,gate,up,down of 32 layers
NORMS_7B = 65 * 4096  # 2 per layer + final, trained as copies
EMBEDDINGS_7B = 2 * 32262 * 4096  # full embed_tokens + lm_head
INPUT_PROJ_7B = 17_833_984
OUTPUT_PROJ_7B = 101_007_648


@pytest.mark.parametrize("stage", ["pretrain", "sft_comp", "sft_gen"])
def test_7b_trainable_parameters_match_the_reference_on_meta(stage):
    cfg = compose_config(
        [f"stage={stage}", "model=mistral_7b", "model.llm.path=null", "video_tokenizer=divot"]
    )
    model = build_divot_llm(
        cfg.model,
        feature_tokens=cfg.video_tokenizer.num_tokens,
        feature_dim=cfg.video_tokenizer.feature_dim,
        train_input_proj=cfg.stage.train_input_proj,
        train_output_proj=cfg.stage.train_output_proj,
        device="meta",
    )
    assert all(p.is_meta for p in model.parameters())

    def trainable(module):
        return sum(p.numel() for p in module.parameters() if p.requires_grad)

    assert LORA_7B + NORMS_7B + EMBEDDINGS_7B == 348_442_624
    assert trainable(model.llm) == 348_442_624
    lora = sum(p.numel() for n, p in model.llm.named_parameters() if "lora_" in n)
    assert lora == LORA_7B
    expected_in = INPUT_PROJ_7B if stage != "sft_gen" else 0
    expected_out = OUTPUT_PROJ_7B if stage != "sft_comp" else 0
    assert (trainable(model.input_resampler), trainable(model.output_resampler)) == (
        expected_in,
        expected_out,
    )
    # the frozen heads are still there, with the reference sizes
    assert sum(p.numel() for p in model.input_resampler.parameters()) == INPUT_PROJ_7B
    assert sum(p.numel() for p in model.output_resampler.parameters()) == OUTPUT_PROJ_7B
