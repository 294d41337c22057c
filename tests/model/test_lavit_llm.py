"""Video-LaVIT's LLM on a tiny random LLaMA (model=lavit_tiny) and the real tokenizer.model:
the grown vocabulary, the loss and its split by target kind, keyframe features in place of
code embeddings, packed rows, the HF folder it saves (LoRA merged) read back by
transformers and by ``from_pretrained``, and generation: 1..max keyframe codes then exactly
135 motion codes, image to video, text-only answers."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from divot_llm.config import compose_config
from divot_llm.model.lavit_generation import answer, generate_clip_codes
from divot_llm.model.lavit_llm import SIDECAR, LaVITLLM, build_lavit_llm, release_vocab
from divot_llm.text.lavit_templates import ClipTokens, image_to_video, text_to_video, video_comprehension
from divot_llm.text.lavit_tokenizer import LaVITTextTokenizer
from divot_llm.text.templates import IGNORE_INDEX
from tests.helpers import mistral_tokenizer_model

MOTION = 135


def tiny_model_cfg(*overrides: str):
    return compose_config(["model=lavit_tiny", "data.root=unused", *overrides]).model


@pytest.fixture(scope="module")
def tok():
    return LaVITTextTokenizer.from_pretrained(mistral_tokenizer_model())


@pytest.fixture(scope="module")
def llm(tok):
    torch.manual_seed(0)
    return build_lavit_llm(tiny_model_cfg(), tok.base_vocab_size).eval()


def clip(seed: int, visual: int = 5) -> ClipTokens:
    gen = torch.Generator().manual_seed(seed)
    return ClipTokens(
        torch.randint(64, (visual,), generator=gen), torch.randint(64, (MOTION,), generator=gen)
    )


def test_the_vocabulary_grows_and_the_loss_splits_by_target_kind(llm, tok):
    v = llm.vocab
    assert (v.text_size, v.size) == (32000, 32000 + 2 + 64 + 2 + 64)
    base = llm.base_model
    assert (
        base.get_input_embeddings().weight.shape[0] == base.get_output_embeddings().weight.shape[0] == v.size
    )
    assert all(p.requires_grad for p in llm.parameters())  # lora.enabled=false: full fine-tuning
    # new input rows start at the mean of the text rows
    rows = base.get_input_embeddings().weight
    assert torch.allclose(rows[v.img_start], rows[: v.text_size].mean(0), atol=1e-6)

    seqs = [
        text_to_video(tok, v, "a red circle", clip(1)),
        video_comprehension(tok, v, [clip(2)], caption="hi"),
    ]
    length = max(len(s) for s in seqs)
    ids = torch.stack([F.pad(s.input_ids, (0, length - len(s)), value=tok.pad_id) for s in seqs])
    labels = torch.stack([F.pad(s.labels, (0, length - len(s)), value=IGNORE_INDEX) for s in seqs])
    mask = torch.stack([F.pad(s.attention_mask, (0, length - len(s))) for s in seqs])
    with torch.no_grad():
        out = llm(ids, mask, labels, return_logits=True)
    targets = labels[:, 1:]
    ce = F.cross_entropy(
        out.logits[:, :-1].transpose(1, 2), targets, reduction="none", ignore_index=IGNORE_INDEX
    )
    kept = targets != IGNORE_INDEX
    assert float(out.loss) == pytest.approx(float(ce[kept].mean()), rel=1e-5)
    kinds = {
        "text": kept & (targets < v.text_size),
        "visual": (targets >= v.img_start) & (targets < v.mov_start),
        "motion": targets >= v.mov_start,
    }
    assert int(kinds["visual"].sum()) == 5 + 2 and int(kinds["motion"].sum()) == MOTION + 2
    for kind, where in kinds.items():
        assert float(getattr(out, f"{kind}_loss")) == pytest.approx(float(ce[where].mean()), rel=1e-5), kind


def test_keyframe_features_replace_the_code_embeddings(tok):
    torch.manual_seed(0)
    llm = build_lavit_llm(tiny_model_cfg("model.lavit.keyframe_input=features"), tok.base_vocab_size).eval()
    seq = image_to_video(tok, llm.vocab, clip(3), "go")
    ids, mask = seq.input_ids[None], seq.visual_mask[None]
    with torch.no_grad():
        plain = llm(ids, return_logits=True).logits
        own = llm.llm.get_input_embeddings()(ids)[mask]  # the codes' own rows: the same logits
        same = llm(ids, keyframe_feats=own, visual_mask=mask, return_logits=True).logits
        other = llm(ids, keyframe_feats=torch.randn_like(own), visual_mask=mask, return_logits=True).logits
    assert torch.allclose(same, plain, atol=1e-5)
    first = int(mask[0].nonzero()[0])
    assert torch.allclose(other[:, :first], plain[:, :first], atol=1e-5)  # causal: before them unchanged
    assert not torch.allclose(other[:, first:], plain[:, first:], atol=1e-3)
    with pytest.raises(ValueError, match="5 keyframe features for 4"):
        llm(
            ids,
            keyframe_feats=torch.randn(5, own.shape[1]),
            visual_mask=mask.clone().index_fill_(1, torch.tensor([first]), False),
        )


def test_a_packed_row_equals_its_sequences_apart(llm, tok):
    a = text_to_video(tok, llm.vocab, "left", clip(4, visual=3)).input_ids
    b = video_comprehension(tok, llm.vocab, [clip(5, visual=2)], caption="right").input_ids
    row = torch.cat([a, b])[None]
    segments = torch.cat([torch.full_like(a, 1), torch.full_like(b, 2)])[None]
    positions = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]
    with torch.no_grad():
        packed = llm(row, position_ids=positions, segment_ids=segments, return_logits=True).logits[0]
        apart = [llm(x[None], return_logits=True).logits[0] for x in (a, b)]
    assert torch.allclose(packed, torch.cat(apart), atol=1e-4)


def test_save_pretrained_writes_an_hf_folder_with_lora_merged(tok, tmp_path):
    torch.manual_seed(0)
    llm = build_lavit_llm(tiny_model_cfg("model.lora.enabled=true"), tok.base_vocab_size).eval()
    with torch.no_grad():  # LoRA's B starts at zero: move it so that the merge matters
        for name, p in llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    ids = torch.tensor([[1, 450, 2654, 32000, 32010, 32065, 32066, 32100]])
    with torch.no_grad():
        expected = llm(ids, return_logits=True).logits
    folder = llm.save_pretrained(tmp_path / "language_model", tok)
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json", SIDECAR):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == llm.vocab.size
    # upstream's loader: a plain LlamaForCausalLM from the folder (no peft, no sidecar)
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(plain).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, expected, atol=1e-5)
    loaded = LaVITLLM.from_pretrained(folder).eval()
    assert loaded.vocab == llm.vocab and loaded.config == llm.config
    with torch.no_grad():
        assert torch.allclose(loaded(ids, return_logits=True).logits, expected, atol=1e-5)
    assert LaVITTextTokenizer.from_pretrained(folder).encode_text("a cat") == tok.encode_text("a cat")
    # a released folder has no sidecar: its rows give the layout (16384 + 1024 codes)
    assert release_vocab(49412).text_size == 32000 and release_vocab(49412).mov_start == 48386


def test_generate_clip_codes_draws_keyframe_codes_then_exactly_135_motion_codes(llm, tok):
    draws = [
        generate_clip_codes(llm, tok, "a red circle moving left", temperature=1.5, seed=s) for s in range(3)
    ]
    for visual, motion in draws:
        assert 1 <= visual.numel() <= llm.config.max_visual_tokens and motion.shape == (MOTION,)
        assert (
            0 <= int(visual.min())
            and int(visual.max()) < 64
            and 0 <= int(motion.min())
            and int(motion.max()) < 64
        )
    assert len({visual.numel() for visual, _ in draws}) > 1  # the keyframe's length is drawn, not fixed
    again = generate_clip_codes(llm, tok, "a red circle moving left", temperature=1.5, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(again, draws[0], strict=True))  # seeded
    keyframe = torch.tensor([3, 1, 4])
    visual, motion = generate_clip_codes(llm, tok, "a cat", keyframe, top_k=8, top_p=0.9, seed=1)
    assert torch.equal(visual, keyframe) and motion.shape == (MOTION,)


def test_answer_is_text_from_codes_or_from_keyframe_features(llm, tok):
    one = clip(6)
    reply = answer(llm, tok, "What moves?", [one], max_new_tokens=6)
    assert isinstance(reply, str) and reply
    # features equal to the codes' own embedding rows: the same greedy answer
    rows = llm.llm.get_input_embeddings()(llm.vocab.visual_ids(one.visual_codes))
    assert answer(llm, tok, "What moves?", [one], max_new_tokens=6, keyframe_feats=[rows]) == reply
    with pytest.raises(ValueError, match="4 keyframe features for 5"):
        answer(llm, tok, "What moves?", [one], max_new_tokens=6, keyframe_feats=[rows[:4]])


def test_a_mistral_backbone_carries_the_vocabulary_too(tok):
    llm = build_lavit_llm(tiny_model_cfg("model.lavit.family=mistral"), tok.base_vocab_size)
    assert type(llm.base_model).__name__ == "MistralForCausalLM"
    seq = text_to_video(tok, llm.vocab, "a cat", clip(7, visual=2))
    out = llm(seq.input_ids[None], labels=seq.labels[None])
    out.loss.backward()
    assert (
        torch.isfinite(out.loss)
        and llm.base_model.get_output_embeddings().weight.grad[llm.vocab.motion_offset :].abs().sum() > 0
    )
