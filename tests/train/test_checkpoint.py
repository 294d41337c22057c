"""Checkpoints in-process (1 rank, real DeepSpeed engine): a signal stops training with a
checkpoint, resume continues the exact run, retention, partial writes are never resumed."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from divot_llm.train import checkpoint
from divot_llm.train.trainer import FINISHED, INTERRUPTED, Trainer
from tests.train.conftest import BatchList, hand_batches, read_metrics, tiny_cfg


def make_trainer(out, batches, *overrides, on_yield=None):
    cfg = tiny_cfg(
        f"train.output_dir={out}",
        "train.max_steps=6",
        "train.save_every=2",
        "train.keep_last=2",
        "optim.warmup_steps=2",
        *overrides,
    )
    loader = BatchList(batches, on_yield=on_yield, skips={"too_small": 2})
    trainer = Trainer(cfg, build_loader=lambda *args, **kwargs: loader)
    trainer.setup()
    return trainer


def train(trainer) -> str:
    try:
        return trainer.train()
    finally:
        trainer.cleanup()


@pytest.fixture(scope="module")
def batches(mistral_tokenizer_dir):
    return hand_batches(mistral_tokenizer_dir, 8, 16, count=5)


def test_sigterm_checkpoint_then_resume_equals_uninterrupted(ds_process_group, batches, tmp_path):
    reference = tmp_path / "reference"
    assert train(make_trainer(reference, batches)) == FINISHED

    run = tmp_path / "run"

    def sigterm_during_step_3(position):
        if position == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    first = make_trainer(run, batches, on_yield=sigterm_during_step_3)
    assert train(first) == INTERRUPTED
    assert first.step == 3  # the step in flight was finished, then saved
    root = run / "checkpoints"
    assert [f.path.name for f in checkpoint.complete_checkpoints(root)] == ["step_00000002", "step_00000003"]
    assert (root / "latest").read_text() == "step_00000003"

    # What a write killed half-way leaves behind: never resumed, removed at start-up.
    partial = root / ".tmp-step_00000004"
    shutil.copytree(root / "step_00000003" / "engine", partial / "engine")
    second = make_trainer(run, batches)
    assert second.resumed_from == root / "step_00000003" and second.step == 3
    assert not partial.exists()
    assert train(second) == FINISHED

    ref, resumed = read_metrics(reference), read_metrics(run)
    assert sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        assert resumed[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], abs=1e-6), step
        assert resumed[step]["train/lr"] == pytest.approx(ref[step]["train/lr"], rel=1e-9), step
    assert [f.path.name for f in checkpoint.complete_checkpoints(root)] == ["step_00000004", "step_00000006"]

    record = ref[6]
    assert record["data/skipped/too_small"] == 2
    assert record["perf/tokens_per_s"] > 0 and record["perf/samples_per_s"] > 0
    assert 0 < record["perf/mfu"] <= record["perf/hfu"]
    assert list((reference / "tensorboard").glob("events.out.tfevents.*"))
    assert (reference / "config.yaml").is_file() and (root / "step_00000006" / "config.yaml").is_file()


def test_resume_setting_is_resolved_safely(tmp_path):
    root = tmp_path / "checkpoints"
    assert checkpoint.resolve_resume("auto", tmp_path) is None
    (root / "step_00000004").mkdir(parents=True)
    (root / "step_00000004" / checkpoint.TRAINER_STATE).write_text("{}")
    (root / ".tmp-step_00000006").mkdir()
    assert checkpoint.resolve_resume("auto", tmp_path) == root / "step_00000004"
    assert (
        checkpoint.resolve_resume(str(root / "step_00000004"), tmp_path / "elsewhere")
        == root / "step_00000004"
    )
    assert checkpoint.resolve_resume(str(tmp_path), tmp_path / "elsewhere") == root / "step_00000004"
    with pytest.raises(FileExistsError, match="resume=auto"):
        checkpoint.resolve_resume("none", tmp_path)
    with pytest.raises(FileNotFoundError):
        checkpoint.resolve_resume(str(tmp_path / "nothing"), tmp_path)
