"""How the ranks of a recipe launch (``data_recipes.ranks.RankJob``) end together: a stop
signal sent to one rank only, an error on one rank, a rank killed outright (its silence
found by the heartbeats, not a hang), and the outcome decided once.

The ranks are real gloo ranks of 2 without a tokenizer: one driver process imports torch
once and forks each scenario's 2 ranks (a process per rank would import torch again, ~7
CPU-s each); the scenarios run side by side, each rank's output in a file."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
import torch.distributed as dist

from data_recipes.ranks import ALL_DONE, EXIT_INTERRUPTED, STOPPED, decide
from divot_llm.train.failures import EXIT_TRAINING_ERROR
from tests import helpers

SILENCE_S = 3  # DIVOT_RANK_SILENCE_S in the driver: a killed rank is found within seconds

DRIVER = r"""
import json, os, signal, socket, sys, time
from data_recipes.ranks import Launch, RankJob

folder, scenarios = sys.argv[1], sys.argv[2:]


def busy(job, seconds=60.0):
    # a share being encoded: asks for a stop before every sample
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not job.stop_requested():
        time.sleep(0.01)


def work(job, scenario):
    rank = job.launch.rank
    if scenario == f"stop{rank}":  # to this rank only: the other one is busy
        os.kill(os.getpid(), signal.SIGTERM)
    elif scenario == "error" and rank == 1:
        raise ValueError("rank 1 read no good record")
    elif scenario == "kill" and rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # says nothing, as the kernel's OOM killer
    elif scenario != "kill":
        busy(job)
    if not job.wait_for_all():
        return job.stopped(f"a test share of rank {rank}")
    return 0


def rank_main(scenario, rank, port):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    out = os.open(f"{folder}/{scenario}-{rank}.out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(out, 2)
    code = 70
    try:
        with RankJob(Launch(rank, 2, rank, 2), f"{folder}/{scenario}", "test") as job:
            code = job.run(lambda: work(job, scenario))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


started, ranks = time.monotonic(), {}
for scenario in scenarios:
    port = free_port()
    for rank in range(2):
        pid = os.fork()
        if pid == 0:
            rank_main(scenario, rank, port)
        ranks[pid] = (scenario, rank)
results = {scenario: {} for scenario in scenarios}
deadline = started + 60
while ranks and time.monotonic() < deadline:
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid == 0:
        time.sleep(0.05)
        continue
    scenario, rank = ranks.pop(pid)
    results[scenario][rank] = [os.waitstatus_to_exitcode(status), time.monotonic() - started]
for pid, (scenario, rank) in ranks.items():  # still running after 60 s: a hang
    os.kill(pid, signal.SIGKILL)
    results[scenario][rank] = [None, None]
for scenario in scenarios:
    for rank in range(2):
        with open(f"{folder}/{scenario}-{rank}.out") as file:
            results[scenario][rank].append(file.read())
print(json.dumps(results))
"""


def end_scenarios(folder, *scenarios: str) -> dict[str, list[list]]:
    """scenario -> [[exit code, seconds from the start, output] of rank 0, of rank 1]."""
    proc = subprocess.run(
        [helpers.PYTHON, "-c", DRIVER, str(folder), *scenarios],
        cwd=helpers.REPO_ROOT, env=helpers.cpu_distributed_env(DIVOT_RANK_SILENCE_S=str(SILENCE_S)),
        capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.splitlines()[-1])
    return {scenario: [ranks[str(r)] for r in range(2)] for scenario, ranks in results.items()}


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("test: error:")]


@pytest.mark.timeout(120)
def test_ranks_end_together_after_a_stop_to_one_an_error_on_one_or_one_killed_outright(tmp_path):
    """One test, one driver (the scenarios' ranks run side by side): a stop signal to one
    rank stops both (exit 143), whichever got it, rank 0 saying so once (the other was
    busy encoding: it sees the stop on the store within seconds; when rank 0, the store's
    host, got it, it waits for the other to see it); an error on one rank ends the other
    within seconds with one message; a rank killed outright (SIGKILL) is found by its
    silence -- as under ``deepspeed`` across nodes, where nobody ends the others -- and
    rank 0 ends the build naming it, within seconds, not a hang."""
    ended = end_scenarios(tmp_path, "stop0", "stop1", "error", "kill")
    for signalled in (0, 1):
        rank0, rank1 = ended[f"stop{signalled}"]
        assert rank0[0] == rank1[0] == EXIT_INTERRUPTED, (signalled, rank0, rank1)
        assert max(rank0[1], rank1[1]) < 20  # not the 60 s of the busy rank's share
        said = f"stopped by SIGTERM on rank {signalled} (a test share of rank 0); run the same command again"
        assert rank0[2].count("stopped by") == 1 and said in rank0[2], rank0[2]
        assert "stopped by" not in rank1[2] and errors(rank0[2] + rank1[2]) == []

    rank0, rank1 = ended["error"]
    assert rank0[0] == rank1[0] == EXIT_TRAINING_ERROR and rank0[1] < 20, (rank0, rank1)
    assert errors(rank0[2]) == [] and len(errors(rank1[2])) == 1, (rank0, rank1)
    assert "ValueError: rank 1 read no good record [rank 1;" in errors(rank1[2])[0]

    rank0, rank1 = ended["kill"]
    assert rank1[0] == -9 and rank0[0] == EXIT_TRAINING_ERROR, (rank0, rank1)
    assert SILENCE_S < rank0[1] < 20
    (line,) = errors(rank0[2])
    assert f"SilentRanksError: rank 1 not heard from for {SILENCE_S} s (killed? out of memory?" in line
    assert "run the same command again to resume" in line


def race(outcomes: tuple[str, str]) -> tuple[list[str], str]:
    """Two ranks deciding ``outcomes`` at once: what each read, and what the store holds."""
    store = dist.HashStore()
    read: list[str] = []
    writers = [threading.Thread(target=lambda o=o: read.append(decide(store, o))) for o in outcomes]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    return read, store.get("divot/recipe/outcome").decode()


def test_the_outcome_is_decided_once_whoever_writes_it_first():
    """A stop and the last rank's "all done" racing: every rank reads the first writer's."""
    stop = f"{STOPPED}SIGTERM on rank 1"
    for outcomes in [(ALL_DONE, stop), (stop, ALL_DONE)] * 10:
        read, held = race(outcomes)
        assert read == [held, held], (read, held)


def test_ranks_per_host_come_from_torchrun_or_the_deepspeed_launcher(monkeypatch):
    # torchrun sets LOCAL_WORLD_SIZE; the deepspeed launcher only LOCAL_SIZE (the trainer's
    # CPU thread count and a cache build's decoding workers divide the host's cores by it)
    from data_recipes.ranks import Launch
    from divot_llm.train.distributed import ranks_on_this_host

    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert ranks_on_this_host() == Launch.from_env().local_world_size == 1
    monkeypatch.setenv("LOCAL_SIZE", "4")
    assert ranks_on_this_host() == Launch.from_env().local_world_size == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert ranks_on_this_host() == 2
