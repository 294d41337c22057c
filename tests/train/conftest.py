"""Shared pieces of the training tests: a small synthetic dataset, the tiny demo config,
hand-made batches behind the loader interface, and launching ``launch/train_cpu.sh``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset
from divot_llm.train.fixed_batches import FixedBatches
from tests import helpers

# Enough for 2 ranks x 1 worker: every source has samples on every reader, and the
# validation split gives each rank 2 batches of 2.
COUNTS = SyntheticCounts(train_videos=12, val_videos=4, images=8, samples_per_shard=4)

# What every test run shares: tiny demo models, fp32, small batches (the synthetic video
# decode dominates a CPU step), one log record per step for exact loss comparisons.
RUN_OVERRIDES = (
    "experiment=demo",
    "data.batch_size=2",
    "data.num_workers=1",
    "train.log_every=1",
    "train.progress_bar=false",
)

# A short pretraining run that measurably learns: validation before the first step and
# after the last, a checkpoint every 10 steps (the launch tests and the ZeRO-3 export run).
STEPS = 30
PRETRAIN = (
    f"train.max_steps={STEPS}",
    "train.save_every=10",
    "train.keep_last=5",
    f"train.eval_every={STEPS}",
    "train.eval_at_start=true",
    "optim.warmup_steps=5",
)


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_data") / "synthetic"
    write_synthetic_dataset(root, seed=3, counts=COUNTS)
    return root


def run_env() -> dict[str, str]:
    """The venv's scripts (``deepspeed``, ``python``) first on PATH, even when pytest was
    started as ``.venv/bin/python -m pytest`` without activating the venv."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "MASTER_PORT": str(helpers.free_port()),
    }


def train_cpu_command(*overrides: str) -> list[str]:
    """``launch/train_cpu.sh`` (the real ``deepspeed`` CLI, 2 CPU ranks) with overrides."""
    return ["bash", str(helpers.REPO_ROOT / "launch" / "train_cpu.sh"), *RUN_OVERRIDES, *overrides]


class Launch:
    """A command started in a session of its own, output to ``log``, with every process
    it starts recorded while it runs -- so that a test can check that none of them
    (launcher, agent, ranks, data workers) outlives it, even those that left its tree."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path, preexec_fn=None):
        self.log = log
        self.started_at = time.monotonic()
        with log.open("w") as sink:
            self.proc = subprocess.Popen(
                command, cwd=helpers.REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=preexec_fn,
            )  # fmt: skip
        self.seen: dict[int, psutil.Process] = {}
        self.ended_at: float | None = None

    def record(self) -> None:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            self.seen.setdefault(child.pid, child)

    def running(self) -> bool:
        """Whether the command still runs (recording its processes on the way)."""
        self.record()
        if self.proc.poll() is None:
            return True
        self.ended_at = self.ended_at or time.monotonic()
        return False

    def wait(self, timeout: float) -> int:
        """The command's exit status; on a timeout everything it started is killed."""
        deadline = time.monotonic() + timeout
        while self.running():
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"still running after {timeout} s:\n{self.output()[-4000:]}")
            time.sleep(0.2)
        return self.proc.returncode

    def survivors(self) -> list[psutil.Process]:
        alive = []
        for process in self.seen.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.Error:
                pass
        return alive

    def assert_all_gone(self, timeout: float = 10) -> None:
        """Every process the command started has exited (within ``timeout``); survivors
        are listed, then killed."""
        deadline = time.monotonic() + timeout
        while (left := self.survivors()) and time.monotonic() < deadline:
            time.sleep(0.2)
        if left:
            listing = "\n".join(f"{p.pid} {' '.join(p.cmdline())[:160]}" for p in left)
            self.kill()
            raise AssertionError(f"processes of the launch still running:\n{listing}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for process in self.survivors():
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        self.proc.wait()

    def output(self) -> str:
        return self.log.read_text()


def single_process_command(*overrides: str) -> list[str]:
    """``python -m divot_llm.train`` without any launcher (one rank)."""
    return [helpers.PYTHON, "-m", "divot_llm.train", *RUN_OVERRIDES, *overrides]


def read_metrics(output_dir: Path, kind: str = "train") -> dict[int, dict]:
    """The ``metrics.jsonl`` records of one kind, by step (a resumed run appends)."""
    path = Path(output_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return {r["step"]: r for r in records if r["kind"] == kind}


def val_total(record: dict) -> float:
    return record["val/lm_loss"] + record["val/gmm_nll"]


def tiny_cfg(*overrides: str):
    """The demo config for in-process runs over hand-made batches: no validation."""
    return compose_config(
        [*RUN_OVERRIDES, "data.root=unused", "train.eval_every=0", "train.eval_at_start=false", *overrides]
    )


class BatchList(FixedBatches):
    """``FixedBatches`` with test hooks: ``on_yield(i)`` runs after batch ``i`` is handed
    out; ``skips`` is what ``skip_counts`` reports."""

    def __init__(self, batches: list[dict], on_yield=None, skips: dict[str, int] | None = None):
        super().__init__(batches)
        self.on_yield, self.skips = on_yield, skips or {}

    def __iter__(self):
        for batch in super().__iter__():
            if self.on_yield is not None:
                self.on_yield(self.position)
            yield batch

    def skip_counts(self) -> dict[str, int]:
        return dict(self.skips)


def hand_batches(tokenizer_dir: Path, n: int, d: int, count: int = 4, seed: int = 5) -> list[dict]:
    """Loader-style batches with cached features (``video_feats``), mixing a comprehension
    and a generation sample each (tests/model/samples.py templates)."""
    from divot_llm.text import DivotTextTokenizer
    from tests.model.samples import collate, comprehension_sample, generation_sample

    tok = DivotTextTokenizer.from_pretrained(tokenizer_dir)
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(count):
        comp = comprehension_sample(
            tok, n, torch.randn(2, n, d, generator=gen), f"a red circle moving left {i}"
        )
        gen_sample = generation_sample(tok, n, torch.randn(1, n, d, generator=gen), f"a blue square {i}")
        batches.append(collate([comp, gen_sample], tok.pad_id))
    return batches


def run_trainer(cfg, build_loader=None):
    """(status, trainer) of a whole in-process run (set up, trained, cleaned up)."""
    from divot_llm.train.trainer import Trainer

    trainer = Trainer(cfg, build_loader=build_loader)
    trainer.setup()
    try:
        return trainer.train(), trainer
    finally:
        trainer.cleanup()


class SigtermAt:
    """A loader that sends SIGTERM to this process when its batch ``at`` is handed out."""

    def __init__(self, loader, at: int):
        self.loader, self.at, self.position = loader, at, 0

    def __iter__(self):
        for batch in self.loader:
            self.position += 1
            if self.position == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)

    def skip_counts(self):
        return self.loader.skip_counts()


def sigterm_at(at: int, base=None):
    """A loader builder with the signature of ``base`` (default ``build_detok_loader``;
    stage=vidtok: ``build_vidtok_loader``) whose train loader is ``SigtermAt(at)``: the
    in-process run stops as a signalled one does."""
    from divot_llm.data.detok_examples import build_detok_loader

    base = base or build_detok_loader

    def build(data_cfg, window, rank=0, world_size=1, split="train", pin_memory=False):
        loader = base(data_cfg, window, rank, world_size, split, pin_memory)
        return SigtermAt(loader, at) if split == "train" else loader

    return build


@pytest.fixture(scope="session")
def lavit_tokens_cache(train_data, tmp_path_factory) -> Path:
    """The LaVIT tokens cache of ``train_data`` (tests/train/lavit_cache.py), built once."""
    from tests.train.lavit_cache import build_lavit_cache

    return build_lavit_cache(train_data, tmp_path_factory.mktemp("lavit_tokens_cache"))
