"""Checkpoints in-process (1 rank, real DeepSpeed engine): a signal stops training with a
checkpoint, resume continues the exact run, retention, partial writes are never resumed;
completeness (every required file of every rank) with fallback to the newest complete
checkpoint, a changed model config refused by key, resume=none touching nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from divot_llm.train import checkpoint, run_lock
from divot_llm.train.trainer import FINISHED, INTERRUPTED, Trainer
from tests.train.conftest import RUN_OVERRIDES, BatchList, hand_batches, read_metrics, tiny_cfg


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


@pytest.fixture(scope="module")
def trained_run(ds_process_group, batches, tmp_path_factory):
    """A finished 4-step run: complete checkpoints step_00000002 and step_00000004."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train(make_trainer(run, batches, "train.max_steps=4")) == FINISHED
    return run


def copy_run(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run", symlinks=True)  # copy2: mtimes kept


def snapshot(folder) -> dict:
    """Every path under ``folder`` with its mtime (and a file's bytes): what 'touched' changes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in [folder, *sorted(folder.rglob("*"))]
    }


def test_resume_falls_back_past_a_checkpoint_missing_a_rank_file(
    ds_process_group, batches, trained_run, tmp_path, capsys
):
    run = copy_run(trained_run, tmp_path)
    root = run / "checkpoints"
    (root / "step_00000004" / "rank_00000_rng.pt").unlink()  # one rank's file lost

    trainer = make_trainer(run, batches)
    said = capsys.readouterr().err
    assert trainer.resumed_from == root / "step_00000002" and trainer.step == 2
    assert "passing over" in said and "rank_00000_rng.pt" in said
    assert f"falling back to {root / 'step_00000002'}" in said
    holder = json.loads((run / run_lock.LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid()  # the run holds its folder ...
    assert train(trainer) == FINISHED
    assert not (run / run_lock.LOCK_NAME).exists()  # ... until it ends
    assert sorted(read_metrics(run)) == list(range(1, 7))  # steps 3..6 appended to 1..4
    assert [f.path.name for f in checkpoint.complete_checkpoints(root)] == ["step_00000004", "step_00000006"]


def test_every_required_file_is_checked(trained_run, tmp_path):
    """A real checkpoint with each of its files missing, then empty: incomplete, naming
    the file; resume=auto passes over it to the previous one, and an explicit path to it
    is refused."""
    source = trained_run / "checkpoints" / "step_00000004"
    files = sorted(str(p.relative_to(source)) for p in source.rglob("*") if p.is_file())
    optional = {
        f for f in files if Path(f).name == "latest" or f.endswith(".py")
    }  # DeepSpeed's tag, converters
    required = [f for f in files if f not in optional]
    assert {"trainer_state.json", "config.yaml", "rank_00000.json", "rank_00000_rng.pt"} <= set(required)
    assert any("optim_states" in f for f in required) and any("model_states" in f for f in required)
    root = tmp_path / "checkpoints"
    shutil.copytree(trained_run / "checkpoints" / "step_00000002", root / "step_00000002")
    for name in files:
        for damage in ("missing", "empty"):
            ckpt = shutil.copytree(source, root / "step_00000004", dirs_exist_ok=True)
            (ckpt / name).unlink() if damage == "missing" else (ckpt / name).write_bytes(b"")
            problems = checkpoint.checkpoint_problems(ckpt)
            if name in optional:
                assert problems == [], name
                continue
            assert _names(name, damage, " ".join(problems)), (name, damage, problems)
            choice = checkpoint.choose_resume("auto", tmp_path)
            assert choice.path == root / "step_00000002", name
            assert any("step_00000004 is incomplete" in note for note in choice.notes), name
            with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
                checkpoint.choose_resume(str(ckpt), tmp_path / "elsewhere")
            shutil.rmtree(ckpt)


def _names(name: str, damage: str, problems: str) -> bool:
    """The problems name the damaged file (a missing engine file: by what is missing)."""
    if damage == "missing" and name.startswith("engine/"):
        return ("optimizer partitions" if "optim_states" in name else "no *model_states.pt") in problems
    return Path(name).name in problems


def test_every_rank_of_the_world_must_be_there(trained_run, tmp_path):
    """The world size the checkpoint was written by decides which rank files it needs,
    and a corrupt one is reported, not iterated."""
    ckpt = shutil.copytree(trained_run / "checkpoints" / "step_00000004", tmp_path / "step_00000004")
    state = json.loads((ckpt / checkpoint.TRAINER_STATE).read_text())
    for world, expected in (
        (2, ["rank_00001.json, rank_00001_rng.pt", "optimizer partitions for ranks [0], expected 0..1"]),
        (10**12, ["rank_00003_rng.pt and 1999999999992 more"]),
        ("2", ["no valid world_size ('2')"]),
    ):
        (ckpt / checkpoint.TRAINER_STATE).write_text(json.dumps({**state, "world_size": world}))
        problems = " ".join(checkpoint.checkpoint_problems(ckpt))
        assert all(text in problems for text in expected), (world, problems)
    (ckpt / checkpoint.TRAINER_STATE).write_text("{not json")
    assert checkpoint.checkpoint_problems(ckpt)[0] == "trainer_state.json is unreadable (JSONDecodeError)"


def test_resume_settings(trained_run, tmp_path):
    root = tmp_path / "checkpoints"
    fresh = checkpoint.choose_resume("auto", tmp_path)
    assert fresh.path is None and "starting fresh" in " ".join(fresh.notes)
    assert checkpoint.choose_resume("none", tmp_path).path is None
    (root / ".tmp-step_00000006").mkdir(parents=True)  # a save that never finished: not a checkpoint
    assert checkpoint.choose_resume("auto", tmp_path).path is None

    (root / "step_00000008").mkdir()  # a step folder without any file
    with pytest.raises(checkpoint.CheckpointError, match="none is complete"):
        checkpoint.choose_resume("auto", tmp_path)
    with pytest.raises(FileExistsError, match="resume=auto"):  # would overwrite it
        checkpoint.choose_resume("none", tmp_path)

    shutil.copytree(trained_run / "checkpoints" / "step_00000004", root / "step_00000004")
    assert checkpoint.choose_resume("auto", tmp_path).path == root / "step_00000004"
    other_run = tmp_path / "elsewhere"
    assert checkpoint.choose_resume(str(root / "step_00000004"), other_run).path == root / "step_00000004"
    assert checkpoint.choose_resume(str(tmp_path), other_run).path == root / "step_00000004"
    assert checkpoint.choose_resume(str(root), other_run).path == root / "step_00000004"
    same_config = yaml.safe_load((root / "step_00000004" / "config.yaml").read_text())
    checkpoint.check_fits(root / "step_00000004", same_config, world_size=1)
    with pytest.raises(
        checkpoint.CheckpointError, match="written by 1 ranks; resuming it needs the same number"
    ):
        checkpoint.check_fits(root / "step_00000004", same_config, world_size=2)
    with pytest.raises(checkpoint.CheckpointError, match="half-written"):
        checkpoint.choose_resume(str(root / ".tmp-step_00000006"), other_run)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint there"):
        checkpoint.choose_resume(str(tmp_path / "nothing"), other_run)


def test_changed_model_config_is_refused_naming_the_keys(ds_process_group, batches, trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    before = snapshot(run)
    with pytest.raises(checkpoint.CheckpointError) as refused:
        make_trainer(run, batches, "model.lora.r=4", "model.gmm.num_components=2", "train.max_steps=8")
    message = str(refused.value)
    assert "step_00000004" in message
    assert "model.lora.r: 8 -> 4" in message and "model.gmm.num_components: 4 -> 2" in message
    assert "max_steps" not in message
    assert snapshot(run) == before  # refused before anything was written

    # What may change on resume: the length of the run, the optimizer's values, runtime knobs.
    trainer = make_trainer(run, batches, "train.max_steps=8", "optim.lr=1e-3", "model.lora.dropout=0.0")
    try:
        assert trainer.resumed_from == run / "checkpoints" / "step_00000004" and trainer.step == 4
    finally:
        trainer.cleanup()


def test_config_differences_cover_the_bound_keys_only():
    saved = {
        "model": {"llm": {"hidden_size": 64, "path": "/a"}, "lora": {"r": 8, "dropout": 0.05}},
        "stage": {
            "name": "pretrain",
            "init_from": None,
            "disc_optim": {"lr": 1e-5, "no_decay_norms_and_biases": False},
        },
        "deepspeed": {"zero_stage": 2, "overlap_comm": True},
        "optim": {"lr": 1e-3, "no_decay_norms_and_biases": False},
        "train": {"max_steps": 10},
    }
    current = {
        "model": {"llm": {"hidden_size": 32, "path": "/moved"}, "lora": {"r": 8, "dropout": 0.0, "new": 1}},
        "stage": {
            "name": "sft_comp",
            "init_from": "/release",
            "disc_optim": {"lr": 1e-4, "no_decay_norms_and_biases": True},
        },
        "deepspeed": {"zero_stage": 3, "overlap_comm": False},
        "optim": {"lr": 1e-4, "no_decay_norms_and_biases": True},
        "train": {"max_steps": 20},
    }
    assert checkpoint.config_differences(saved, current) == [
        "deepspeed.zero_stage: 2 -> 3",
        "model.llm.hidden_size: 64 -> 32",
        "model.lora.new: (absent) -> 1",
        "optim.no_decay_norms_and_biases: False -> True",
        "stage.disc_optim.no_decay_norms_and_biases: False -> True",
        "stage.name: 'pretrain' -> 'sft_comp'",
    ]


def test_resume_none_leaves_an_existing_run_untouched(ds_process_group, batches, trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    before = snapshot(run)
    trainer = Trainer(
        tiny_cfg(f"train.output_dir={run}", "train.resume=none"), build_loader=lambda *a, **k: None
    )
    with pytest.raises(FileExistsError, match="resume=none"):
        trainer.setup()
    trainer.cleanup()
    assert snapshot(run) == before  # config.yaml's bytes and mtime included; no lock left


def test_divot_train_refuses_before_hydra_writes(trained_run, train_data, tmp_path, capsys, monkeypatch):
    """The command line's own check runs before Hydra writes .hydra/ into the folder."""
    from divot_llm.cli import train as cli

    run = copy_run(trained_run, tmp_path)
    before = snapshot(run)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    overrides = [*RUN_OVERRIDES, f"data.root={train_data}", f"train.output_dir={run}"]
    for setting, said in (("none", "already holds checkpoints"), ("auto", "model.lora.r: 8 -> 4")):
        with pytest.raises(SystemExit) as exit_:
            cli._check_config([*overrides, f"train.resume={setting}", "model.lora.r=4"])
        assert exit_.value.code == cli.EXIT_CONFIG_ERROR and said in capsys.readouterr().err
    assert snapshot(run) == before
