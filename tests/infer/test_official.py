"""Divot's official release layout, built here with tiny random weights, loads through
``--official`` / ``official_config`` and reproduces the modules that wrote it."""

from __future__ import annotations

import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.detokenizers import build_video_detokenizer
from divot_llm.export.verify import compare, reference_outputs, verification_batches
from divot_llm.infer import load_inference_models, official_config
from divot_llm.model import build_divot_llm, save_release
from divot_llm.text import load_text_tokenizer
from divot_llm.tokenizers import build_video_tokenizer
from tests.helpers import run_entry_point

TINY = ["model=tiny", "video_tokenizer=divot_tiny", "detokenizer=tiny"]


@pytest.fixture(scope="module")
def official(mistral_tokenizer_dir, tmp_path_factory):
    """``pretrained/`` as Divot's README lays it out, from tiny random modules."""
    root = tmp_path_factory.mktemp("official") / "pretrained"
    cfg = compose_config(TINY)
    torch.manual_seed(1)
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    weights = root / "Divot_tokenizer_detokenizer"
    weights.mkdir(parents=True)
    torch.save(video_tokenizer.encoder.state_dict(), weights / "Divot_tokenizer.bin")
    video_tokenizer.vit.model.save_pretrained(root / "CLIP-ViT-H-14-laion2B-s32B-b79K")
    detoks = {}
    for stage in (1, 2):
        detoks[stage] = build_video_detokenizer(cfg.detokenizer, tokenizer=video_tokenizer)
        torch.save(detoks[stage].release_state_dict(), weights / f"Divot_detokenizer_stage{stage}.bin")
    models = {}
    for name in ("sft_comp", "sft_gen"):
        models[name] = build_divot_llm(cfg.model, feature_tokens=8, feature_dim=16, use_lora=False).eval()
        save_release(models[name], root / f"Divot_{name}")  # the official llm/ has no tokenizer files
    text_tokenizer = load_text_tokenizer(mistral_tokenizer_dir)
    text_tokenizer.save_pretrained(root / "cvlm_mistral_instruct_tokenizer")
    return root, video_tokenizer, detoks, models, text_tokenizer


def test_official_layout_loads_the_modules_that_wrote_it(official):
    root, video_tokenizer, detoks, models, text_tokenizer = official
    for task, stage, detok_stage in (("comprehend", "sft_comp", None), ("generate", "sft_gen", 2)):
        loaded = load_inference_models(official_config(root, task, TINY), want_detokenizer=task == "generate")
        assert loaded.release_dir == root / f"Divot_{stage}"
        assert len(loaded.text_tokenizer) == len(text_tokenizer)
        batches = verification_batches(loaded.text_tokenizer, models[stage])
        for result in compare(reference_outputs(models[stage], batches), reference_outputs(loaded.model, batches),
                              torch.float32):  # fmt: skip
            assert result.max_abs_diff == 0.0, str(result)
        clips = torch.rand(2, 5, 3, 64, 64) * 2 - 1
        assert torch.equal(loaded.video_tokenizer.encode(clips), video_tokenizer.encode(clips))
        if detok_stage is None:
            assert loaded.detokenizer is None
        else:
            feats = torch.randn(1, 8, 16)
            assert torch.equal(loaded.detokenizer.decode(feats, steps=2, seed=0),
                               detoks[detok_stage].decode(feats, steps=2, seed=0))  # fmt: skip


def test_reconstruct_uses_the_stage1_detokenizer(official):
    root, _, detoks, _, _ = official
    loaded = load_inference_models(
        official_config(root, "reconstruct", TINY), with_llm=False, want_detokenizer=True
    )
    feats = torch.randn(1, 8, 16)
    assert torch.equal(
        loaded.detokenizer.decode(feats, steps=2, seed=0), detoks[1].decode(feats, steps=2, seed=0)
    )


def test_cli_comprehends_with_the_official_files(official, synthetic_video):
    root = official[0]
    tiny = [arg for item in TINY for arg in ("--set", item)]
    proc = run_entry_point("divot-infer", "comprehend", "--official", str(root), *tiny, str(synthetic_video),
                           "--num-clips", "2", "--max-new-tokens", "4", "--greedy")  # fmt: skip
    assert proc.stdout.startswith(f"{synthetic_video}: ")
