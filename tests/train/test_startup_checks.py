"""``divot-train`` refuses a config it cannot run before building anything: keys added
with ``+key=``, values out of range, local paths that are not there or not what they must
be -- exit 2 on every rank, the message printed once, no traceback."""

from __future__ import annotations

import subprocess

import pytest

from divot_llm.cli.train import _check_config
from tests import helpers
from tests.train.conftest import run_env, train_cpu_command


def refused(*overrides: str, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        _check_config(list(overrides))
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_a_missing_path_stops_every_rank_with_one_message(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        train_cpu_command("model.llm.path=/nonexistent/mistral", f"data.root={tmp_path}", f"train.output_dir={out}"),
        cwd=tmp_path, env=helpers.cpu_distributed_env(**run_env()), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output[-3000:]
    assert (
        output.count(
            "divot-train: config error: no such file or directory: /nonexistent/mistral (model.llm.path)"
        )
        == 1
    )
    assert "Traceback" not in output
    assert not out.exists()  # nothing started


def test_plus_typos_and_out_of_range_values_are_named(capsys):
    assert "unknown key model.lora.rnak: Key 'rnak' not in 'LoraConfig'" in refused(
        "+model.lora.rnak=3", capsys=capsys
    )
    err = refused("data.batch_size=0", "model.lora.r=-4", capsys=capsys)
    assert "data.batch_size=0 must be >= 1" in err and "model.lora.r=-4 must be >= 1" in err


def test_an_unknown_stage_is_named_with_the_known_ones(capsys):
    assert refused("stage.name=finetune", capsys=capsys).strip() == (
        "divot-train: config error: stage.name='finetune' is not a stage; known stages: pretrain, sft_comp, "
        "sft_gen, detok, tokenizer, detok_adapt, t2v, vidtok, motion_tokenizer, lavit_pretrain, lavit_sft, lavit_detok"
    )


def test_a_run_folder_is_not_a_release_to_start_from(zero2_run, tmp_path, capsys):
    err = refused("stage=sft_comp", f"stage.init_from={zero2_run}", f"data.root={tmp_path}", capsys=capsys)
    assert err.strip() == (
        f"divot-train: config error: {zero2_run} is a training run folder, not a release: make a release "
        f"with divot-merge --checkpoint {zero2_run} --out REL (stage.init_from)"
    )


def test_plan_reads_only_the_model_config(tmp_path, capsys):
    """plan=true builds on the meta device from model.llm.path's config.json: the data root
    and the weights need not exist, the config.json must."""
    err = refused("experiment=pretrain_7b", "plan=true", f"model.llm.path={tmp_path}", "model.tokenizer_path=/x",
                  "video_tokenizer.pretrained_path=/x", "video_tokenizer.vit_path=/x",
                  "detokenizer.pretrained_path=/x", "data.root=/datasets", capsys=capsys)  # fmt: skip
    assert err.strip() == (
        f"divot-train: config error: {tmp_path} has no config.json: not a Hugging Face model folder (model.llm.path)"
    )


def test_only_the_first_rank_of_a_node_prints(monkeypatch, capsys):
    # ... and the others wait for it before exiting: the launcher ends every rank when one
    # fails, so a rank that exited first under load would take the message with it
    from divot_llm import launch_guard

    waits = []
    monkeypatch.setattr(launch_guard.time, "sleep", waits.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert refused("model.llm.path=/nonexistent/mistral", capsys=capsys) == ""
    assert waits == [launch_guard.REFUSAL_GRACE_S]
