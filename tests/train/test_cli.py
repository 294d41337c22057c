"""``divot-train`` start-up: clear config errors, and ``plan=true`` (meta device, no weights)."""

from __future__ import annotations

import subprocess

import pytest
from transformers import MistralConfig

from divot_llm.train.plan import format_plan, make_plan
from tests import helpers
from tests.train.conftest import tiny_cfg

GiB = 2**30


def divot_train(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [helpers.PYTHON, "-m", "divot_llm.train", *args],
        cwd=cwd, env=helpers.cpu_distributed_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_unknown_key_fails_fast_naming_it(tmp_path):
    proc = divot_train("model.lora.rnak=3", cwd=tmp_path)
    assert proc.returncode == 2
    assert "rnak" in proc.stderr and "LoraConfig" in proc.stderr
    assert not (tmp_path / "outputs").exists()  # nothing started


def test_missing_values_are_listed(tmp_path):
    proc = divot_train("experiment=sft_comp_7b", "data.root=/datasets", cwd=tmp_path)
    assert proc.returncode == 2
    assert "must be set" in proc.stderr and "stage.init_from" in proc.stderr


@pytest.fixture(scope="module")
def mistral_7b_config_dir(tmp_path_factory):
    """An HF folder with only Mistral-7B's config.json: planning must not need weights."""
    out = tmp_path_factory.mktemp("mistral_7b")
    MistralConfig(sliding_window=4096).save_pretrained(out)  # defaults are the 7B shapes
    return out


def plan_overrides(llm_dir, *extra):
    return [
        "experiment=pretrain_7b",
        f"model.llm.path={llm_dir}",
        "model.tokenizer_path=null",
        "video_tokenizer.pretrained_path=null",
        "video_tokenizer.vit_path=null",
        "detokenizer.pretrained_path=null",
        "data.root=/datasets",
        "plan=true",
        *extra,
    ]


def test_plan_counts_match_the_reference_and_follow_zero_formulas(mistral_7b_config_dir):
    from divot_llm.config import compose_config

    z2, model, _ = make_plan(compose_config(plan_overrides(mistral_7b_config_dir)))
    assert z2.trainable_params == 467_284_256  # divot-reference §6.6: ≈ 467.3 M in pretraining
    assert next(model.parameters()).device.type == "meta"
    assert z2.frozen_bytes == 2 * z2.frozen_params  # bf16, replicated by ZeRO-2
    psi = z2.trainable_params
    assert z2.model_states_bytes == 2 * psi + int(18 * psi / 8)  # DeepSpeed's ZeRO-2 estimate, 8 GPUs
    assert 12 < z2.frozen_bytes / GiB < 14  # ~6.98 B frozen Mistral weights

    z3, *_ = make_plan(
        compose_config(plan_overrides(mistral_7b_config_dir, "deepspeed=zero3", "train.plan_nodes=4"))
    )
    assert z3.gpus == 32 and z3.frozen_bytes == 2 * z3.frozen_params / 32
    assert z2.activation_bytes > 0  # mistral_7b checkpoints activations; without, far more
    full, *_ = make_plan(
        compose_config(plan_overrides(mistral_7b_config_dir, "model.llm.checkpoint_every=0"))
    )
    assert full.activation_bytes > 5 * z2.activation_bytes
    by_recompute = z2.activation_bytes_by_recompute  # what plan=true lists, for the user to choose
    assert by_recompute[0] == full.activation_bytes and by_recompute[1] == z2.activation_bytes
    assert by_recompute[1] < by_recompute[2] < by_recompute[0]
    # packed rows of pack_length: 2 comprehension samples (max 1400) per 2880-token row
    assert z2.micro_batch_tokens == 4 * 2880

    sft, *_ = make_plan(
        compose_config(
            plan_overrides(mistral_7b_config_dir, "stage=sft_gen", "stage.init_from=/releases/pretrain")
        )
    )
    assert sft.trainable_params == 449_450_272  # §6.6: ≈ 449.5 M, the input projection frozen

    # model.head: over VidTok FSQ 32768 (8^5) codes, 9 frames at 64^2 (3 x 8 x 8 = 192 tokens
    # of 5 digits) the code heads' modules replace the GMM projections; the rest is unchanged
    rest = z2.trainable_params - z2.head_input_params - z2.head_output_params  # LoRA, norms, embeddings
    fsq = ["video_tokenizer=vidtok_fsq_causal_488_32768", "video_tokenizer.frames_per_clip=9",
           "video_tokenizer.input_height=64", "video_tokenizer.input_width=64"]  # fmt: skip
    added = {}
    for head, p in (("fsq_flat", 32768), ("fsq_factorized", 5 * 8)):
        overrides = plan_overrides(mistral_7b_config_dir, *fsq, f"model.head={head}")
        overrides.remove("video_tokenizer.vit_path=null")  # VidTok has no ViT
        plan, _, tokenizer = make_plan(compose_config(overrides))
        assert tokenizer.feature_levels == [8] * 5
        inputs, outputs = plan.head_input_params, plan.head_output_params
        assert outputs == 4096 * p + p and inputs == 4096 * p  # embedding rows: one per code / digit value
        added[head] = plan.trainable_params - rest
        assert added[head] == inputs + outputs
    assert added == {"fsq_flat": 268_468_224, "fsq_factorized": 327_720}  # flat: 134M each way


def test_plan_counts_the_learned_queries_over_a_whole_vidtok_latent_grid(mistral_7b_config_dir):
    """17 x 256^2 clips of vidtok_kl_causal_488_4chn at p = 1: 5 x 32 x 32 = 5120 tokens of 4
    latents, read by 256 queries; one LLM token per feature token fails, naming both remedies."""
    from divot_llm.config import compose_config

    kl = plan_overrides(mistral_7b_config_dir, "video_tokenizer=vidtok_kl_causal_488_4chn")
    kl.remove("video_tokenizer.vit_path=null")  # VidTok has no ViT
    queries = ["model.resampler.kind=queries", "model.resampler.num_queries=256"]
    cfg = compose_config([*kl, *queries])
    plan, model, tokenizer = make_plan(cfg)
    assert (tokenizer.num_tokens, tokenizer.feature_dim) == (5120, 4)
    assert (
        (plan.tokens_per_clip, plan.feature_tokens)
        == (model.tokens_per_clip, model.feature_tokens)
        == (256, 5120)
    )
    h, k = 4096, cfg.model.gmm.num_components
    p = 2 * k * 4 + k  # GMM parameters per feature token
    attention = 4 * (h * h + h) + 2 * 2 * h  # q, k, v, out + two LayerNorms, one layer
    assert plan.head_input_params == (4 * h + h) + (h * h + h) + 5120 * h + 256 * h + attention
    assert plan.head_output_params == 5120 * h + attention + (h * p + p) + (p * p + p)
    assert plan.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert "model.resampler.kind=queries: 256 LLM tokens per clip for 5120 feature tokens" in format_plan(
        plan, cfg
    )
    with pytest.raises(ValueError, match=r"5120 tokens per clip, more than the LLM's 256 .* "
                       r"model.resampler.kind=queries .* video_tokenizer.llm_patch_size=8 \(80 tokens"):  # fmt: skip
        make_plan(compose_config(kl))


def test_plan_runs_from_the_command_line_without_weights(mistral_7b_config_dir, tmp_path):
    proc = divot_train(*plan_overrides(mistral_7b_config_dir, f"train.output_dir={tmp_path}"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "467.28 M trainable" in proc.stdout and "ZeRO-2" in proc.stdout and "GiB" in proc.stdout
    assert "video head model.head=gmm: input module 17.83 M, output module 101.01 M" in proc.stdout
    for choice in ("no recompute", "1 layer in 2 recomputed", "every layer recomputed"):
        assert choice in proc.stdout
    assert not (tmp_path / "checkpoints").exists()


def test_tiny_plan_matches_the_tiny_model():
    plan, model, tokenizer = make_plan(tiny_cfg())
    assert plan.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plan.tokenizer_params == sum(p.numel() for p in tokenizer.parameters())
