"""End to end through the real launchers on 2 CPU ranks and the synthetic shards.

* ZeRO-2 and ZeRO-3 on 2 ranks (the export tests' runs, ``zero2_run`` / ``zero3_run``,
  under torchrun): the validation loss (a fixed set of held-out batches, measured before
  the first step and after the last) falls by at least 30% in 30 tiny steps.
* A run under ``launch/train_cpu.sh`` (the ``deepspeed`` CLI) whose launcher pid gets a
  SIGTERM mid-way saves a complete checkpoint, and the
  launcher exits 143 after its ranks, leaving no process behind; the continuation's next
  checkpoint write is cut short by the kernel (a file-size limit): it says so, removes
  the partial write and keeps the previous checkpoint; the next ``resume=auto`` (under
  torchrun this time) starts from the last complete checkpoint and every logged loss
  equals the uninterrupted run's to 1e-5.
* Both SFT stages start from the merged release of the pretraining run (plain
  ``python -m divot_llm.train``, one process), train only what their stage trains.

The ZeRO-2 run is shared: learning check, resume reference, release source.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from divot_llm.cli.train import EXIT_INTERRUPTED
from divot_llm.train import checkpoint
from divot_llm.train.failures import EXIT_TRAINING_ERROR
from tests import helpers
from tests.train.conftest import (
    PRETRAIN,
    RUN_OVERRIDES,
    STEPS,
    Launch,
    hand_batches,
    read_metrics,
    run_env,
    single_process_command,
    train_cpu_command,
    val_total,
)

pytestmark = pytest.mark.slow


def launch(command: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    return helpers.run_command(command, cwd=helpers.REPO_ROOT, timeout=timeout, **run_env())


def assert_learned(out: Path) -> None:
    val = read_metrics(out, kind="val")
    assert sorted(val) == [0, STEPS]
    start, end = val[0], val[STEPS]
    assert val_total(end) <= 0.7 * val_total(start), (start, end)
    assert end["val/lm_loss"] < start["val/lm_loss"] and end["val/gmm_nll"] < start["val/gmm_nll"]
    assert end["val/feature_cosine"] > start["val/feature_cosine"]
    assert sorted(read_metrics(out)) == list(range(1, STEPS + 1))


def test_zero2_training_learns(zero2_run):
    """ZeRO-2 on 2 ranks (the export tests' run, under torchrun) learns."""
    assert_learned(zero2_run)
    assert (zero2_run / "config.yaml").is_file()
    assert (zero2_run / "checkpoints" / "latest").read_text() == checkpoint.step_dir_name(STEPS)


def test_zero3_training_learns(zero3_run):
    """ZeRO-3 on 2 ranks (the export tests' run, under torchrun) learns as ZeRO-2 does."""
    assert_learned(zero3_run)


# ------------------------------------------------------------------------ resume


def wait_for_step(out: Path, step: int, launch: Launch, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while max(read_metrics(out), default=0) < step:
        assert launch.running(), "the run ended before it could be interrupted"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
        time.sleep(0.2)


def file_size_limit(limit: int):
    """preexec_fn: writing a file past ``limit`` bytes fails (python ignores SIGXFSZ: the
    write comes back short), no core file. The limit must exceed the batches the data
    workers pass through shared memory (files too) and stay below the checkpoint's files
    (16-25 MB for the tiny model)."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def test_sigterm_and_killed_checkpoint_write_resume_to_identical_losses(zero2_run, export_data, tmp_path):
    out = tmp_path / "run"
    args = (f"data.root={export_data}", f"train.output_dir={out}", *PRETRAIN)  # zero2_run's config
    env = helpers.cpu_distributed_env(**run_env())
    root = out / "checkpoints"

    # 1. SIGTERM to the launcher's pid (a scheduler's or `kill`'s; a terminal's Ctrl-C
    # reaches the same process) once step 8 is logged: the ranks finish the step and save,
    # then the launcher exits 143 -- after them, leaving no process of the run behind.
    interrupted = Launch(train_cpu_command(*args), env, tmp_path / "interrupted.log")
    wait_for_step(out, 8, interrupted)
    os.kill(interrupted.proc.pid, signal.SIGTERM)
    assert interrupted.wait(timeout=120) == EXIT_INTERRUPTED, interrupted.output()[-3000:]
    interrupted.assert_all_gone()
    assert "stopped by SIGTERM after step" in interrupted.output(), interrupted.output()[-3000:]
    stopped = checkpoint.latest_checkpoint(root)
    assert stopped is not None and 8 <= stopped.step < STEPS
    assert checkpoint.checkpoint_problems(stopped.path) == []
    assert (root / "latest").read_text() == stopped.path.name

    # 2. Resume; the kernel cuts the next checkpoint write short. The run says so once,
    # removes the partial write, keeps the previous checkpoint and exits 1.
    partial = root / f".tmp-{checkpoint.step_dir_name((stopped.step // 10 + 1) * 10)}"
    crashed = Launch(
        train_cpu_command(*args, "train.resume=auto"), env, tmp_path / "crashed.log",
        preexec_fn=file_size_limit(8 * 2**20),
    )  # fmt: skip
    assert crashed.wait(timeout=400) == EXIT_TRAINING_ERROR, crashed.output()[-3000:]
    crashed.assert_all_gone()
    assert crashed.output().count(f"could not write checkpoint {partial}") == 1, crashed.output()[-3000:]
    assert not partial.exists()
    assert checkpoint.latest_checkpoint(root).path == stopped.path
    assert (root / "latest").read_text() == stopped.path.name

    # 3. resume=auto picks the last complete checkpoint (torchrun this time) and finishes.
    done = launch(
        [
            helpers.PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={helpers.free_port()}", "-m", "divot_llm.train", *RUN_OVERRIDES, *args,
            "train.resume=auto",
        ]
    )  # fmt: skip
    assert f"resumed from {stopped.path} at step {stopped.step}" in done.stderr
    assert not list(root.glob(".tmp-*"))

    reference, resumed = read_metrics(zero2_run), read_metrics(out)  # last record per step wins
    assert sorted(resumed) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert resumed[step]["train/loss"] == pytest.approx(reference[step]["train/loss"], abs=1e-5), step
    assert read_metrics(out, "val")[STEPS]["val/lm_loss"] == pytest.approx(
        read_metrics(zero2_run, "val")[STEPS]["val/lm_loss"], abs=1e-5
    )


# ------------------------------------------------------------------------ stages


@pytest.fixture(scope="module")
def release(tiny_release) -> Path:
    """The merged, verified release of ``zero2_run`` (tests/conftest.py)."""
    return tiny_release


def test_release_holds_the_trained_model_merged(zero2_run, release, mistral_tokenizer_dir):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from divot_llm.config import load_saved_config
    from divot_llm.model import load_release, load_training_state_dict
    from divot_llm.model.build import build_models

    last = checkpoint.latest_checkpoint(zero2_run / "checkpoints").path
    cfg = load_saved_config(last / "config.yaml")
    _, _, trained = build_models(cfg, torch.float32)  # the run's frozen random base, from its seed
    load_training_state_dict(
        trained,
        get_fp32_state_dict_from_zero_checkpoint(str(last), tag="engine", exclude_frozen_parameters=True),
    )
    merged = load_release(release, cfg.model, feature_tokens=8, feature_dim=16)
    batch = hand_batches(mistral_tokenizer_dir, 8, 16, count=1)[0]
    with torch.no_grad():
        expected, got = trained.eval()(**batch), merged(**batch)
    assert got.lm_loss == pytest.approx(float(expected.lm_loss), abs=1e-4)
    assert got.gmm_loss == pytest.approx(float(expected.gmm_loss), abs=1e-4)
    assert (release / "llm" / "tokenizer.model").is_file() and (
        release / "agent" / "pytorch_model.bin"
    ).is_file()


@pytest.mark.parametrize(
    ("stage", "trained_head", "frozen_head"),
    [("sft_comp", "input_resampler", "output_resampler"), ("sft_gen", "output_resampler", "input_resampler")],
)
def test_sft_stage_trains_from_the_merged_release(
    release, train_data, tmp_path, stage, trained_head, frozen_head
):
    """4 steps of each SFT stage from the release: the run trains a fresh LoRA, its stage's
    projection and the embeddings, all starting from the release's values (a few AdamW
    steps of lr <= 3e-3 move them by a few 1e-3; a random init would be ~1e-1 away)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    from divot_llm.model import read_agent_file

    launch(
        single_process_command(
            f"stage={stage}", f"data=synthetic_{stage}", f"data.root={train_data}", f"stage.init_from={release}",
            f"train.output_dir={tmp_path}", "train.max_steps=4", "train.save_every=4", "optim.warmup_steps=1",
        )
    )  # fmt: skip
    records = read_metrics(tmp_path)
    assert sorted(records) == [1, 2, 3, 4] and all(math.isfinite(r["train/loss"]) for r in records.values())
    state = get_fp32_state_dict_from_zero_checkpoint(
        str(tmp_path / "checkpoints" / "step_00000004"), tag="engine", exclude_frozen_parameters=True
    )
    assert any("lora_A" in k for k in state)  # a fresh LoRA on the merged weights
    assert not any(k.startswith(frozen_head) for k in state)  # frozen: not trained, not saved
    agent = read_agent_file(release / "agent")
    for key in (k for k in agent if k.startswith(trained_head)):
        assert (state[key] - agent[key]).abs().mean() < 0.02, key
    # Rows of tokens the 4 batches never touch only see weight decay: equal to the release's.
    embed = state["llm.base_model.model.model.embed_tokens.weight"]
    assert (
        embed - load_file(release / "llm" / "model.safetensors")["model.embed_tokens.weight"]
    ).abs().median() < 1e-4
