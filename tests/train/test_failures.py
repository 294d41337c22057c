"""Nothing hangs, every error is said once, nothing is lost (``divot_llm.train.failures``,
``divot_llm.data.worker_signals``, ``divot_llm.launch_guard``).

* Data-loader workers: a SIGTERM ends one only when its rank sends it, SIGINT never does,
  and a rank killed outright takes its workers along; a rank whose worker raised exits at
  once instead of waiting on its workers forever (the inherited blocked SIGTERM).
* Ranks: an error on one rank ends a rank blocked for good within seconds; the error is
  printed once however many ranks hit it; the full tracebacks go to ``train.log``; a rank
  whose launcher guard was killed outright saves and stops.
* A real 2-rank ``launch/train_cpu.sh`` run whose data worker raises exits non-zero
  within seconds of the error with one message and no process left (the SIGTERM to the
  launcher's pid is in ``test_launch.py``: it reuses that file's run).
* A full disk: the checkpoint write says "no space left on device", removes the partial
  write and keeps the previous checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import psutil
import pytest
import torch

from divot_llm.data.worker_signals import worker_init_fn
from divot_llm.launch_guard import LAUNCHER_ENV, Launcher
from divot_llm.train import checkpoint
from divot_llm.train.failures import EXIT_TRAINING_ERROR, checkpoint_write_failure, describe
from divot_llm.train.trainer import INTERRUPTED, Trainer, stop_signals_deferred
from tests import helpers
from tests.train.conftest import (
    RUN_OVERRIDES,
    BatchList,
    Launch,
    hand_batches,
    run_env,
    tiny_cfg,
    train_cpu_command,
)

# ------------------------------------------------------------------------ data workers


class Endless(torch.utils.data.IterableDataset):
    """Yields its worker's pid, slowly."""

    def __iter__(self):
        while True:
            time.sleep(0.01)
            yield os.getpid()


def mask_of(pid: int, field: str) -> set[int]:
    """The signals in ``SigBlk``/``SigIgn`` of /proc/<pid>/status."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith(field))
    bits = int(line.split()[1], 16)
    return {n + 1 for n in range(64) if bits >> n & 1}


def wait_gone(pid: int, timeout: float) -> bool:
    try:
        psutil.Process(pid).wait(timeout=timeout)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_worker_obeys_only_its_ranks_sigterm():
    loader = torch.utils.data.DataLoader(
        Endless(), batch_size=None, num_workers=1, worker_init_fn=worker_init_fn()
    )
    with stop_signals_deferred():  # as the trainer forks them: SIGTERM/SIGINT blocked
        batches = iter(loader)
        worker = next(batches)
    # The worker decided: SIGINT ignored, SIGTERM blocked everywhere but in the thread
    # that takes it, nothing else left blocked.
    assert mask_of(worker, "SigBlk") == {signal.SIGTERM} and signal.SIGINT in mask_of(worker, "SigIgn")

    for sig in ("TERM", "INT"):  # from another process: a scheduler, a terminal, a launcher
        subprocess.run(["kill", f"-{sig}", str(worker)], check=True)
    time.sleep(0.5)
    assert psutil.pid_exists(worker) and next(batches) == worker

    os.kill(worker, signal.SIGTERM)  # from its rank: torch's shutdown, multiprocessing's exit
    assert wait_gone(worker, timeout=5)
    del batches


def run_python(script: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [helpers.PYTHON, "-c", textwrap.dedent(script)], cwd=helpers.REPO_ROOT,
        env=helpers.cpu_distributed_env(**env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_rank_whose_worker_raised_exits_without_waiting_on_its_workers():
    """The hang of every rank: a worker's exception keeps the loader (and its workers)
    alive until interpreter exit, where ``multiprocessing`` SIGTERMs and joins them."""
    started = time.monotonic()
    done = run_python(
        """
        import sys, torch
        from divot_llm.data.worker_signals import worker_init_fn
        from divot_llm.train.trainer import stop_signals_deferred

        class Broken(torch.utils.data.IterableDataset):
            def __iter__(self):
                raise ValueError("this source cannot be read")

        loader = torch.utils.data.DataLoader(Broken(), batch_size=None, num_workers=1, worker_init_fn=worker_init_fn())
        try:
            with stop_signals_deferred():
                next(iter(loader))
        except ValueError as exc:
            kept = exc  # its traceback holds the loader's iterator until the interpreter exits
            sys.exit(3)
        """
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert time.monotonic() - started < 45


def test_a_rank_killed_outright_takes_its_workers_along(tmp_path):
    rank = subprocess.Popen(
        [helpers.PYTHON, "-c", textwrap.dedent(
            """
            import os, time, torch
            from divot_llm.data.worker_signals import worker_init_fn

            class Stalling(torch.utils.data.IterableDataset):
                def __iter__(self):
                    yield os.getpid()
                    time.sleep(3600)  # busy in the dataset: torch's own watchdog never looks
                    yield 0

            batches = iter(torch.utils.data.DataLoader(
                Stalling(), batch_size=None, num_workers=1, worker_init_fn=worker_init_fn()))
            print(next(batches), flush=True)
            next(batches)
            """
        )],
        cwd=helpers.REPO_ROOT, env=helpers.cpu_distributed_env(), stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    worker = int(rank.stdout.readline())
    time.sleep(0.5)
    rank.kill()
    rank.wait()
    assert wait_gone(worker, timeout=3)


# ------------------------------------------------------------------------ ranks


RANK_SCRIPT = """
import os, sys, threading, torch, torch.distributed as dist
from divot_llm.train.failures import FailureReport, exit_now

rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
report = FailureReport(sys.argv[1], rank)
report.watch()
scenario = sys.argv[2]
if scenario == "alike" or (scenario == "one" and rank == 1):
    try:
        raise ValueError(f"reader {rank} of 2 found no good record in 12{rank} records")
    except ValueError as exc:
        exit_now(report.report(exc))
if scenario == "crash" and rank == 1:
    os._exit(9)  # dies without a word, as a process killed by the kernel
if scenario == "host_crash" and rank == 0:
    dist.barrier()  # both ranks watch the store first
    os._exit(9)  # the store's host (rank 0 under deepspeed and env://) dies without a word
if scenario == "host_crash":
    dist.barrier()
if scenario == "crash":
    try:
        dist.all_reduce(torch.ones(1))
    except Exception as exc:
        exit_now(report.report(exc))
threading.Event().wait()  # blocked for good, as in a collective whose peer is gone
"""


def run_two_ranks(tmp_path: Path, scenario: str) -> list[subprocess.CompletedProcess]:
    env = helpers.cpu_distributed_env(
        WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(helpers.free_port())
    )
    procs = [
        subprocess.Popen(
            [helpers.PYTHON, "-c", RANK_SCRIPT, str(tmp_path), scenario],
            cwd=helpers.REPO_ROOT,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in range(2)
    ]
    done = []
    for rank, proc in enumerate(procs):
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"rank {rank} still running 60 s after the failure") from None
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, "", err))
    return done


def said(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("divot-train: error:")]


def test_an_error_on_one_rank_ends_a_rank_blocked_for_good(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, "one")
    assert rank0.returncode == rank1.returncode == EXIT_TRAINING_ERROR
    assert said(rank0.stderr) == []  # it failed only because rank 1 did
    (line,) = said(rank1.stderr)
    assert "ValueError: reader 1 of 2 found no good record in 121 records [rank 1;" in line
    log = (tmp_path / "train.log").read_text()
    assert "rank 1 failed:\nTraceback" in log and "rank 0: stopped: another rank failed" in log


def test_an_error_every_rank_hits_is_printed_once_by_rank_0(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, "alike")
    assert rank0.returncode == rank1.returncode == EXIT_TRAINING_ERROR
    assert len(said(rank0.stderr)) == 1 and said(rank1.stderr) == []
    assert "reader 0 of 2 found no good record in 120 records" in said(rank0.stderr)[0]
    log = (tmp_path / "train.log").read_text()
    assert "rank 0 failed:\n" in log and "in 121 records" in log  # both tracebacks kept


def test_a_rank_that_died_silently_is_reported_by_the_one_left(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, "crash")
    assert rank1.returncode == 9 and rank0.returncode == EXIT_TRAINING_ERROR
    (line,) = said(rank0.stderr)  # nobody else can say what happened
    assert "another rank ended without saying why (killed? out of memory?); here: " in line


def test_the_store_hosts_silent_death_is_said_by_the_rank_left_blocked(tmp_path):
    rank0, rank1 = run_two_ranks(tmp_path, "host_crash")
    assert rank0.returncode == 9 and rank1.returncode == EXIT_TRAINING_ERROR
    (line,) = said(rank1.stderr)  # no store to agree on anything: rank 0's node's next rank says it
    assert "the job's store is gone: the process hosting it (rank 0 under deepspeed" in line and "[rank 1;" in line
    assert "rank 1: stopped: the job's store is gone" in (tmp_path / "train.log").read_text()


def test_a_rank_whose_launcher_is_gone_saves_and_stops(
    ds_process_group, mistral_tokenizer_dir, tmp_path, monkeypatch
):
    """The guard of launch/*.sh was killed outright (SIGKILL): the ranks stop as for a SIGTERM."""
    assert not Launcher(os.getpid(), psutil.Process().create_time()).gone()
    guard = subprocess.Popen([helpers.PYTHON, "-c", ""])
    created = psutil.Process(guard.pid).create_time()
    guard.wait()
    monkeypatch.setenv(LAUNCHER_ENV, f"{socket.gethostname()} {guard.pid} {created}")
    batches = hand_batches(mistral_tokenizer_dir, 8, 16, count=2)
    trainer = Trainer(
        tiny_cfg(f"train.output_dir={tmp_path}", "train.max_steps=10"), lambda *a, **k: BatchList(batches)
    )
    trainer.setup()
    try:
        assert trainer.train() == INTERRUPTED
    finally:
        trainer.cleanup()
    assert trainer.step == 1
    assert checkpoint.checkpoint_problems(tmp_path / "checkpoints" / checkpoint.step_dir_name(1)) == []
    assert (
        f"stopped by the end of its launcher (pid {guard.pid}) after step 1"
        in (tmp_path / "train.log").read_text()
    )


# ------------------------------------------------------------------------ messages


class ReaderError(ValueError):
    pass


class UnreadableShard(torch.utils.data.IterableDataset):
    """Raises a chained error, as a reader does over a broken file."""

    def __iter__(self):
        try:
            raise OSError("bad header")
        except OSError as exc:
            raise ReaderError("shard-00003.tar: 12 of 12 members unreadable") from exc


class UnexpectedRecord(torch.utils.data.IterableDataset):
    def __iter__(self):
        raise KeyError("video")  # a record field the parser did not expect


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        (
            UnreadableShard(),
            "ReaderError: shard-00003.tar: 12 of 12 members unreadable (in data-loader worker 0)",
        ),
        (UnexpectedRecord(), "KeyError: 'video' (in data-loader worker 0)"),
    ],
)
def test_a_workers_error_is_described_as_the_worker_raised_it(dataset, expected):
    with pytest.raises(Exception) as caught:
        next(iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1)))
    description = describe(caught.value)
    # The traceback's frames hold the loader's iterator in a reference cycle: left to a
    # later garbage collection, its worker shutdown waited 5 s (the join timeout) in
    # whichever test came next. Freed here, the worker stops at once.
    traceback.clear_frames(caught.tb)
    assert description == expected


def test_no_space_is_said_so():
    with pytest.raises(OSError) as caught:
        Path("/dev/full").write_text("x" * 100_000)
    assert describe(caught.value) == "OSError: no space left on device"


def test_a_failed_checkpoint_write_removes_the_partial_one_and_names_the_kept_one(tmp_path):
    partial = tmp_path / "checkpoints" / ".tmp-step_00000020"
    (partial / "engine").mkdir(parents=True)
    kept = tmp_path / "checkpoints" / "step_00000010"
    with pytest.raises(OSError) as caught:
        Path("/dev/full").write_bytes(b"\0" * 100_000)  # the kernel's own ENOSPC
    error = checkpoint_write_failure(caught.value, partial, kept)
    assert not partial.exists()
    assert str(error).startswith(f"no space left on device: could not write checkpoint {partial} (")
    assert f"the previous checkpoint {kept} is kept" in str(error)

    # torch says only "unexpected pos": a probe write next to it asks the file system why;
    # here there is space, so the message says the write was cut short.
    partial.mkdir()
    with pytest.raises(RuntimeError) as short:
        torch.save({"x": torch.zeros(1000)}, "/dev/full")
    error = checkpoint_write_failure(short.value, partial, None)
    assert "the write was cut short (" in str(error) and "there is no earlier checkpoint" in str(error)
    assert not partial.exists() and not list(partial.parent.iterdir())  # the probe is gone too
    assert checkpoint_write_failure(RuntimeError("Connection closed by peer"), partial, None) is None


def can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs user namespaces to mount a small tmpfs")
def test_a_full_disk_keeps_the_previous_checkpoint(train_data, tmp_path):
    """One process on a 100 MiB tmpfs: the step-1 checkpoint (~66 MB) fits, step 2's does
    not. The tmpfs lives in the command's mount namespace: its files are copied out."""
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    copy.mkdir()
    train = [
        helpers.PYTHON, "-m", "divot_llm.train", *RUN_OVERRIDES, f"data.root={train_data}",
        f"train.output_dir={disk}/run", "train.max_steps=3", "train.save_every=1", "train.keep_last=5",
        "train.eval_every=0", "train.eval_at_start=false",
    ]  # fmt: skip
    script = 'mount -t tmpfs -o size=100m none "$1" && "${@:3}"; rc=$?; cp -a "$1/." "$2/"; exit $rc'
    done = subprocess.run(
        ["unshare", "-rm", "bash", "-c", script, "bash", str(disk), str(copy), *train], cwd=helpers.REPO_ROOT,
        env=helpers.cpu_distributed_env(**run_env()), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == EXIT_TRAINING_ERROR, done.stderr[-3000:]
    (line,) = said(done.stderr)
    partial = disk / "run" / "checkpoints" / ".tmp-step_00000002"
    assert f"no space left on device: could not write checkpoint {partial} (" in line
    root = copy / "run" / "checkpoints"
    assert f"the previous checkpoint {disk}/run/checkpoints/step_00000001 is kept" in line
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000001"]
    assert checkpoint.checkpoint_problems(root / "step_00000001") == []
    assert "Traceback" in (copy / "run" / "train.log").read_text()


# ------------------------------------------------------------------------ the real launcher


def guard(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [helpers.PYTHON, "-m", "divot_llm.launch_guard", *command], cwd=helpers.REPO_ROOT,
        env=helpers.cpu_distributed_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_launcher_guard_exits_as_its_command_did():
    assert guard("bash", "-c", "exit 3").returncode == 3
    assert guard("bash", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM  # as a shell reports it
    missing = guard("no-such-launcher")
    assert missing.returncode == 127 and "cannot run no-such-launcher" in missing.stderr


def write_mostly_broken_source(root: Path, train_data: Path, good: int = 10, broken: int = 200) -> None:
    """A caption source whose few readable records let start-up pass, and whose many
    missing videos then push each rank's data worker over ``data.max_skip_fraction``."""
    (root / "media" / "videos").mkdir(parents=True)
    shutil.copy(next((train_data / "media" / "videos").glob("*.mp4")), root / "media" / "videos" / "good.mp4")
    records = [{"caption": f"a red circle moving left {i}", "video": "videos/good.mp4"} for i in range(good)]
    records += [
        {"caption": f"a lost video {i}", "video": f"videos/missing-{i:03d}.mp4"} for i in range(broken)
    ]
    (root / "annotations").mkdir()
    (root / "annotations" / "video_caption.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.slow
def test_a_data_worker_error_ends_the_launch_with_one_message(train_data, tmp_path):
    root, out = tmp_path / "data", tmp_path / "run"
    write_mostly_broken_source(root, train_data)
    command = train_cpu_command(
        f"data.root={root}", "~data.sources.video_gen", "~data.sources.image_comp", "~data.sources.image_gen",
        "train.eval_every=0", "train.eval_at_start=false", f"train.output_dir={out}", "train.max_steps=50",
    )  # fmt: skip
    launch = Launch(command, helpers.cpu_distributed_env(**run_env()), tmp_path / "launch.log")
    returncode = launch.wait(timeout=300)
    output = launch.output()
    assert returncode == EXIT_TRAINING_ERROR, output[-3000:]
    launch.assert_all_gone()
    (line,) = said(output)
    assert "DataError: source video_comp" in line and "(in data-loader worker 0)" in line, line
    assert output.count("source video_comp:") == 1  # no other copy of it, no traceback
    log = (out / "train.log").read_text()
    assert "failed:\nTraceback" in log and "DataError" in log
    first_failure = re.search(r"^(\S+ \S+) rank \d+ failed", log, re.M).group(1)
    ended = time.time() - (time.monotonic() - launch.ended_at)
    assert ended - time.mktime(time.strptime(first_failure, "%Y-%m-%d %H:%M:%S")) < 15  # seconds, not a hang
    assert launch.ended_at - launch.started_at < 60  # start-up, the failure and the whole exit
