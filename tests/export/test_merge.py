"""divot-merge: the release layout, --verify passing on a trained model and failing on a
corrupted adapter, bf16 releases."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from divot_llm.cli.merge import main as merge_main
from divot_llm.config import load_saved_config
from divot_llm.export.verify import compare, reference_outputs, verification_batches
from divot_llm.model import load_release, load_training_state_dict, read_agent_file
from divot_llm.model.build import build_models
from tests.helpers import run_entry_point as cli
from tests.helpers import run_main


@pytest.fixture(scope="module")
def fp32_export(zero2_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32") / "export"
    cli("divot-export", "zero-to-fp32", str(zero2_run), str(out))
    return out


@pytest.fixture(scope="module")
def verified_release(fp32_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("release") / "pretrain"
    proc = cli("divot-merge", "--checkpoint", str(fp32_export), "--out", str(out), "--verify",
               "--max-shard-size", "2MB")  # fmt: skip
    return out, proc


def test_release_layout_and_verification(verified_release, zero2_run):
    release, proc = verified_release
    assert "verify logits" in proc.stderr and "verified" in proc.stdout
    llm = release / "llm"
    config = json.loads((llm / "config.json").read_text())
    assert config["vocab_size"] == 32000 + 262
    assert (llm / "model.safetensors.index.json").is_file() and len(list(llm.glob("model-*.safetensors"))) > 1
    assert (llm / "tokenizer.model").is_file() and (llm / "generation_config.json").is_file()
    agent = read_agent_file(release / "agent")
    assert sorted(agent) == sorted(
        f"{head}.proj.{i}.{kind}" for head in ("input_resampler", "output_resampler")
        for i in (0, 2) for kind in ("weight", "bias")
    )  # fmt: skip
    info = json.loads((release / "release.json").read_text())
    assert info["stage"] == "pretrain" and info["verified"] and info["dtype"] == "fp32"
    assert info["source_checkpoint"].endswith("step_00000030") and info["source_step"] == 30
    assert len(info["config_sha256"]) == 16
    assert (release / "config.yaml").is_file() and (release / "video_tokenizer").is_dir()


def test_release_reproduces_the_trained_model(verified_release, zero2_run):
    """Independently of --verify: the live run's parameters, unmerged, vs the release."""
    release, _ = verified_release
    cfg = load_saved_config(zero2_run / "checkpoints" / "step_00000030" / "config.yaml")
    tok, vtok, trained = build_models(cfg, torch.float32)
    load_training_state_dict(trained, torch.load(zero2_run / "live.pt", weights_only=True))
    merged = load_release(release, cfg.model, feature_tokens=vtok.num_tokens, feature_dim=vtok.feature_dim)
    batches = verification_batches(tok, trained, seed=3)
    for result in compare(
        reference_outputs(trained, batches), reference_outputs(merged, batches), torch.float32
    ):
        assert result.ok and result.max_abs_diff < 1e-4, str(result)


def test_verify_fails_on_a_corrupted_adapter(fp32_export, tmp_path, capsys):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for f in fp32_export.iterdir():
        (corrupt / f.name).write_bytes(f.read_bytes())
    state = load_file(corrupt / "model.safetensors")
    key = next(k for k in sorted(state) if "lora_B" in k and "q_proj" in k)
    state[key][0, 0] = float("nan")  # one flipped exponent in one adapter weight
    save_file(state, corrupt / "model.safetensors")

    code, _, err = run_main(merge_main, "--checkpoint", str(corrupt), "--out", str(tmp_path / "rel"), "--verify",
                            capsys=capsys, check=False)  # fmt: skip
    assert code == 3
    assert "verification FAILED" in err and "logits" in err
    assert not (tmp_path / "rel").exists() and not (tmp_path / "rel.tmp").exists()


def test_bf16_release_verifies_and_halves_the_weights(zero2_run, verified_release, tmp_path, capsys):
    release, _ = verified_release
    run_main(merge_main, "--checkpoint", str(zero2_run), "--out", str(tmp_path / "bf16"), "--verify", "--dtype",
             "bf16", capsys=capsys)  # fmt: skip
    info = json.loads((tmp_path / "bf16" / "release.json").read_text())
    assert info["dtype"] == "bf16" and info["verified"]
    size = lambda d: sum(p.stat().st_size for p in (d / "llm").glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "bf16") < 0.6 * size(release)
    assert all(t.dtype == torch.bfloat16 for t in read_agent_file(tmp_path / "bf16" / "agent").values())


def test_existing_output_and_missing_checkpoint_are_clear_errors(verified_release, tmp_path, capsys):
    release, _ = verified_release
    code, _, err = run_main(merge_main, "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x"),
                            capsys=capsys, check=False)  # fmt: skip
    assert code == 1 and "no DeepSpeed checkpoint" in err
    code, _, err = run_main(
        merge_main, "--checkpoint", str(tmp_path), "--out", str(release), capsys=capsys, check=False
    )
    assert code == 1 and "exists" in err


def test_set_changes_the_config_the_model_is_rebuilt_from(zero2_run, verified_release, tmp_path, capsys):
    """``--set`` reaches the rebuild: another seed rebuilds another random tiny base (a moved
    base model works the same way, through ``model.llm.path``), recorded in the release."""
    release, _ = verified_release
    run_main(merge_main, "--checkpoint", str(zero2_run), "--out", str(tmp_path / "rel"), "--set", "train.seed=7",
             capsys=capsys)  # fmt: skip
    assert OmegaConf.load(tmp_path / "rel" / "config.yaml").train.seed == 7
    key = "model.layers.0.mlp.down_proj.weight"  # frozen base weight (LoRA merged into it)
    reseeded = load_file(next((tmp_path / "rel" / "llm").glob("*.safetensors")))
    original = {}
    for shard in (release / "llm").glob("model-*.safetensors"):
        original.update(load_file(shard))
    assert not torch.allclose(reseeded[key], original[key])
