"""Frozen text encoders: tiny random BERT / CLIP text / Mistral folders saved with the real
transformers classes and loaded through ``build_text_encoder``."""

from __future__ import annotations

import json
import string

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    BertConfig,
    BertModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    MistralForCausalLM,
)

from divot_llm.config import compose_config
from divot_llm.config.loading import ConfigError
from divot_llm.config.paths import PathError
from divot_llm.config.schema import TextEncoderConfig
from divot_llm.text import load_text_tokenizer
from divot_llm.text.encoders import build_text_encoder, read_input_embeddings

CAPTIONS = ["a red circle on blue", "the green squares", "red"]  # different lengths: padding
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "on", "blue", "green", "square",
              "##s", "the", "[", "]", "CL", "##S"]  # fmt: skip


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("bert")
    (out / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(BERT_VOCAB),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    BertModel(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """Byte-level BPE vocabulary of the printable ASCII characters (each also as a word end)
    plus one merge chain, the way CLIP's vocab.json + merges.txt look."""
    out = tmp_path_factory.mktemp("clip")
    chars = [c for c in string.printable if not c.isspace()]
    words = [*chars, *(c + "</w>" for c in chars), "re", "red</w>", "<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (out / "merges.txt").write_text("#version: 0.2\nr e\nre d</w>\n")
    tokenizer = CLIPTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    CLIPTextModel(config).save_pretrained(out)
    return out


def check_frozen(encoder, dim: int) -> torch.Tensor:
    """Encodes CAPTIONS after a parent's train(); checks what every encoder promises."""
    encoder.train()
    assert not encoder.training and not any(m.training for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())
    vectors_bd = encoder.encode(CAPTIONS)
    assert vectors_bd.shape == (len(CAPTIONS), dim) and vectors_bd.dtype == torch.float32
    assert not vectors_bd.requires_grad
    torch.testing.assert_close(encoder.encode(CAPTIONS), vectors_bd, rtol=0, atol=0)  # deterministic
    with torch.autocast("cpu", dtype=torch.bfloat16):  # inside a bf16 step: still float32 maths
        torch.testing.assert_close(encoder.encode(CAPTIONS), vectors_bd, rtol=0, atol=0)
    return vectors_bd


def test_bert_pools_like_the_seed_and_ignores_padding(bert_dir):
    encoder = build_text_encoder(TextEncoderConfig(kind="bert", path=str(bert_dir)))
    vectors_bd = check_frozen(encoder, dim=32)
    model = BertModel.from_pretrained(bert_dir).eval()
    for caption, vector_d in zip(CAPTIONS, vectors_bd, strict=True):
        ids = encoder.tokenizer(caption, return_tensors="pt").input_ids  # one caption: no padding
        assert ids[0, 0] == encoder.tokenizer.cls_token_id and ids[0, -1] == encoder.tokenizer.sep_token_id
        with torch.no_grad():
            states_nd = model(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(vector_d, states_nd[1:].mean(dim=0))  # [SEP] in, [CLS] out


def test_bert_keeps_special_token_strings_of_a_caption_as_text(bert_dir):
    encoder = build_text_encoder(TextEncoderConfig(kind="bert", path=str(bert_dir)))
    as_text = encoder.encode(["red [CLS] circle"])
    as_pieces = encoder.encode(["red [ CLS ] circle"])  # the same word pieces, [CLS] spelt out
    torch.testing.assert_close(as_text, as_pieces)


def test_clip_gives_the_end_of_text_state(clip_dir):
    encoder = build_text_encoder(TextEncoderConfig(kind="clip", path=str(clip_dir), max_length=12))
    check_frozen(encoder, dim=32)
    model = CLIPTextModel.from_pretrained(clip_dir).eval()
    captions = [*CAPTIONS, "red<|endoftext|>"]  # a special-token string in a caption is text
    for caption, vector_d in zip(captions, encoder.encode(captions), strict=True):
        ids = encoder.tokenizer(
            caption, truncation=True, max_length=12, split_special_tokens=True, return_tensors="pt"
        ).input_ids[0]
        assert ids.tolist().index(encoder.tokenizer.eos_token_id) == len(ids) - 1  # one, kept when cut
        with torch.no_grad():
            torch.testing.assert_close(vector_d, model(input_ids=ids[None]).last_hidden_state[0, -1])


def test_llm_mean_averages_the_input_embeddings_of_user_text(tiny_mistral_dir):
    encoder = build_text_encoder(TextEncoderConfig(path=None, max_length=4), llm_path=str(tiny_mistral_dir))
    captions = [*CAPTIONS, "<frame_00000></s> red"]  # control-token strings are ordinary text
    vectors_bd = check_frozen(encoder, dim=64)
    embed_vd = MistralForCausalLM.from_pretrained(tiny_mistral_dir).get_input_embeddings().weight.detach()
    tokenizer = load_text_tokenizer(None)  # the folder has no tokenizer.model
    for caption, vector_d in zip(captions, encoder.encode(captions), strict=True):
        ids = tokenizer.encode_text(caption)[:4]
        assert not set(ids) & tokenizer.control_ids
        torch.testing.assert_close(vector_d, embed_vd[ids].mean(dim=0))
    torch.testing.assert_close(encoder.encode(CAPTIONS), vectors_bd)
    assert encoder.encode([""]).abs().max() == 0  # no tokens: zeros, not NaN


def test_input_embeddings_are_read_from_sharded_safetensors(tmp_path):
    embed_vd = torch.randn(10, 4, dtype=torch.bfloat16)
    save_file({"model.embed_tokens.weight": embed_vd}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"lm_head.weight": torch.randn(10, 4)}, tmp_path / "model-00002-of-00002.safetensors")
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}  # fmt: skip
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    read_vd = read_input_embeddings(tmp_path)
    assert read_vd.dtype == torch.float32 and torch.equal(read_vd, embed_vd.float())
    (tmp_path / "model.safetensors.index.json").unlink()
    (tmp_path / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no input embeddings"):
        read_input_embeddings(tmp_path)


def test_missing_or_wrong_folders_say_what_is_wrong(bert_dir, clip_dir, tmp_path):
    with pytest.raises(
        PathError, match=r"kind=bert needs a local model folder: set stage.text_encoder.path$"
    ):
        build_text_encoder(TextEncoderConfig(kind="bert"), llm_path=str(bert_dir))  # llm_path is llm_mean's
    with pytest.raises(PathError, match="stage.text_encoder.path or model.llm.path"):
        build_text_encoder(TextEncoderConfig())
    with pytest.raises(PathError, match=r"no such file or directory: .*nowhere \(stage.text_encoder.path"):
        build_text_encoder(TextEncoderConfig(kind="clip", path=str(tmp_path / "nowhere")))
    with pytest.raises(PathError, match="holds a 'bert' model, not a clip one"):
        build_text_encoder(TextEncoderConfig(kind="clip", path=str(bert_dir)))
    no_tokenizer = tmp_path / "clip_without_tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((clip_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no clip tokenizer"):
        build_text_encoder(TextEncoderConfig(kind="clip", path=str(no_tokenizer)))
    with pytest.raises(FileNotFoundError, match="no safetensors weights"):
        build_text_encoder(TextEncoderConfig(kind="llm_mean", path=str(no_tokenizer)))


def test_stage_text_encoder_is_a_typed_checked_config():
    cfg = compose_config(["stage.text_encoder.kind=clip", "stage.text_encoder.max_length=16"])
    assert cfg.stage.text_encoder == TextEncoderConfig(kind="clip", path=None, max_length=16)
    with pytest.raises(
        ConfigError, match="stage.text_encoder.kind='t5' must be one of 'bert', 'clip', 'llm_mean'"
    ):
        compose_config(["stage.text_encoder.kind=t5"])
