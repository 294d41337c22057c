"""The output folder's lock with real processes: a live holder is named and refused, a
killed one's lock is taken over, one of several racing takeovers wins, another machine's
lock is never taken, and a second Trainer refuses before writing anything."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from divot_llm.train import run_lock
from divot_llm.train.run_lock import LOCK_NAME, RunLockedError
from divot_llm.train.trainer import Trainer
from tests.train.conftest import tiny_cfg

# A process that takes the lock of argv[1] once it reads a line, says so, and holds it
# until its stdin closes. run_lock.py is loaded from its file: it needs nothing else, and
# torch's import (the package's) would make each process take seconds.
HOLDER = textwrap.dedent(
    f"""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("run_lock", {str(Path(run_lock.__file__))!r})
    run_lock = sys.modules["run_lock"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_lock)
    sys.stdin.readline()
    try:
        lock = run_lock.acquire(sys.argv[1])
    except run_lock.RunLockedError as exc:
        print("refused", flush=True)
    else:
        print("took over" if lock.took_over else "created", flush=True)
    sys.stdin.read()
    """
)


def start_holder(folder: Path, go: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    if go:
        release_holders([proc])
    return proc


def release_holders(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.stdin.write("go\n")
    for proc in procs:  # all flushed together: they race
        proc.stdin.flush()


def held_by(folder: Path) -> dict:
    return json.loads((folder / LOCK_NAME).read_text())


def test_live_holder_is_named_then_its_lock_is_taken_over_once_killed(tmp_path):
    holder = start_holder(tmp_path)
    try:
        assert holder.stdout.readline().strip() == "created"
        with pytest.raises(RunLockedError) as refused:
            run_lock.acquire(tmp_path)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(refused.value)
        assert str(tmp_path / LOCK_NAME) in str(refused.value)
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            run_lock.check_free(tmp_path)
    finally:
        holder.kill()  # SIGKILL: no chance to release
        holder.wait()
    assert held_by(tmp_path)["pid"] == holder.pid  # left behind by the dead process

    run_lock.check_free(tmp_path)  # stale: passes
    lock = run_lock.acquire(tmp_path)
    assert lock.took_over is not None and lock.took_over.pid == holder.pid
    assert held_by(tmp_path)["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    lock.release()  # idempotent


def test_racing_takeovers_of_a_stale_lock_have_one_winner(tmp_path):
    dead = start_holder(tmp_path)
    assert dead.stdout.readline().strip() == "created"
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    racers = [start_holder(tmp_path, go=False) for _ in range(6)]
    try:
        time.sleep(1.0)  # every racer has started and waits for its line
        release_holders(racers)
        outcomes = sorted(racer.stdout.readline().strip() for racer in racers)
    finally:
        for racer in racers:
            racer.kill()
            racer.wait()
    assert outcomes == ["refused"] * 5 + ["took over"]


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """A lock naming a pid that now belongs to another process (started at another time)."""
    me = run_lock.this_process()
    (tmp_path / LOCK_NAME).write_text(json.dumps(asdict(replace(me, pid_start=(me.pid_start or 0) + 1))))
    lock = run_lock.acquire(tmp_path)
    assert lock.took_over is not None and lock.took_over.pid == os.getpid()
    lock.release()


def test_another_machines_lock_is_never_taken(tmp_path):
    other = replace(run_lock.this_process(), host="node-that-crashed", pid=1)
    (tmp_path / LOCK_NAME).write_text(json.dumps(asdict(other)))
    for check in (run_lock.acquire, run_lock.check_free):
        with pytest.raises(RunLockedError) as refused:
            check(tmp_path)
        assert "pid 1 on host node-that-crashed" in str(refused.value)
        assert f"if it is gone, delete {tmp_path / LOCK_NAME}" in str(refused.value)
    assert held_by(tmp_path)["host"] == "node-that-crashed"


@pytest.mark.parametrize("content", [b"", b"not json", b'{"pid": "7"}', b"[1, 2]"])
def test_an_unreadable_lock_is_refused_not_taken(tmp_path, monkeypatch, content):
    monkeypatch.setattr(run_lock, "SETTLE_SECONDS", 0.1)
    (tmp_path / LOCK_NAME).write_bytes(content)
    with pytest.raises(RunLockedError, match=f"delete {tmp_path / LOCK_NAME}"):
        run_lock.acquire(tmp_path)
    assert (tmp_path / LOCK_NAME).read_bytes() == content


def test_a_lock_that_is_not_a_file_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).mkdir()
    for check in (run_lock.acquire, run_lock.check_free):
        with pytest.raises(RunLockedError, match="cannot be read"):
            check(tmp_path)


def test_released_at_interpreter_exit(tmp_path):
    script = f"import sys; sys.path.insert(0, {os.getcwd()!r}); " + (
        "from divot_llm.train import run_lock; run_lock.acquire(sys.argv[1]); raise SystemExit(3)"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], timeout=60)
    assert proc.returncode == 3 and not (tmp_path / LOCK_NAME).exists()


def test_a_second_trainer_refuses_before_writing(ds_process_group, tmp_path):
    holder = start_holder(tmp_path / "run")
    try:
        assert holder.stdout.readline().strip() == "created"
        trainer = Trainer(tiny_cfg(f"train.output_dir={tmp_path / 'run'}"), build_loader=lambda *a, **k: None)
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} on host"):
            trainer.setup()
        trainer.cleanup()
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [LOCK_NAME]  # no config.yaml
        assert held_by(tmp_path / "run")["pid"] == holder.pid  # the holder's lock stays
    finally:
        holder.kill()
        holder.wait()
