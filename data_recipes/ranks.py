"""A data recipe on every rank of a launch: which share of the data this process builds,
on which device, how it stops, and how the ranks finish together.

Under a launcher (``torchrun``, ``deepspeed``: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in
the environment) rank R of W builds share R/W of every source -- the loader's own split
(``sources.Consumer``), as ``--shard R/W`` would -- on ``cuda:LOCAL_RANK`` (or the CPU).
The ranks join a gloo process group for the end only: a rank that is done waits, polling
the job's key-value store, for the others (however long their share takes, while still
answering a stop signal), then rank 0 gets every rank's result (``gather``).

How the build ends is decided once, on the job's store (``OUTCOME_KEY``, written with
``compare_set``: the first rank to write it wins, and every rank reads the same): "done"
(every rank counted itself done), a stop, or silent ranks.

Stopping: SIGTERM/SIGINT (or the end of the ``launch_guard`` that started the rank) ask
the build to stop between batches (``stop_requested``); the first rank to stop decides
the outcome, and the others, still encoding or waiting, see it within ``OUTCOME_POLL_S``
and stop too. What is written stays, and the same command resumes.

Errors: an error on one rank ends every rank within seconds, with one message
(``divot_llm.train.failures.FailureReport``, as in training: the traceback goes to the
log file, the other ranks see the failure on the job's store). A rank killed outright
(SIGKILL, the kernel's OOM killer, a lost node) says nothing: every rank beats on the
store (``Heartbeats``, a daemon thread, so a rank busy encoding keeps beating), and a
waiting rank that has not heard a peer for ``SILENCE_S`` (``DIVOT_RANK_SILENCE_S``)
ends the build as an error naming it -- ``torchrun``'s agent would end the ranks, but
the ``deepspeed`` launcher across nodes leaves them waiting.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from divot_llm.cli.train import EXIT_INTERRUPTED  # divot-train's: 128 + SIGTERM
from divot_llm.launch_guard import StopSignals, refuse
from divot_llm.train.distributed import ranks_on_this_host
from divot_llm.train.failures import FailureReport, exit_now

WAIT_POLL_S = 1.0  # a rank that is done looks this often whether the others are
OUTCOME_POLL_S = 2.0  # a rank still encoding looks this often whether the build was stopped elsewhere
LAUNCHER_POLL_S = 5.0  # how often a rank checks that its launch_guard is still there
SILENCE_S = 120.0  # a rank not heard from for this long is taken for dead
SILENCE_ENV = "DIVOT_RANK_SILENCE_S"  # overrides SILENCE_S (tests: a few seconds)
BEATS_PER_SILENCE = 8  # heartbeats per SILENCE_S: a late beat or two is no silence
STOP_ACK_WAIT_S = 10.0  # after a stop, rank 0 (the store's host) waits this long for every rank to see it

KEY = "divot/recipe/"
OUTCOME_KEY = KEY + "outcome"  # how the build ends: ALL_DONE, STOPPED + why, SILENT + what
DONE_KEY = KEY + "done"  # how many ranks finished their share
SEEN_KEY = KEY + "seen"  # how many ranks read the outcome
BEAT_KEY = KEY + "beat/"  # + rank: that rank's heartbeat counter
ALL_DONE = "done"
STOPPED = "stopped:"
SILENT = "silent:"


class SilentRanksError(RuntimeError):
    """Ranks of the build stopped beating: killed outright, out of memory, their node lost."""


@dataclass(frozen=True)
class Launch:
    """Where this process sits in its launch (one rank of one when started alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> Launch:
        """What the launcher's environment says; a process started without one is rank 0
        of 1 (``--local_rank=N``, which ``deepspeed`` without ``--no_local_rank`` passes, is
        read from ``LOCAL_RANK``, which it sets too)."""
        env = os.environ
        if not (env.get("RANK", "").isdigit() and env.get("WORLD_SIZE", "").isdigit()):
            return cls()
        return cls(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            local_world_size=ranks_on_this_host(),
        )

    @property
    def launched(self) -> bool:
        """Whether this is one of several ranks (a launch of one rank is a plain build)."""
        return self.world_size > 1

    def shard(self, requested: tuple[int, int] | None) -> tuple[int, int]:
        """The share this process builds: ``--shard`` (default all of it), or under a
        launcher its rank's -- a ``--shard`` that says otherwise is a mistake.

        Raises:
            ValueError: ``--shard`` contradicts the launcher's rank and world size.
        """
        if not self.launched:
            return requested or (0, 1)
        if requested is not None and requested != (self.rank, self.world_size):
            raise ValueError(
                f"--shard {requested[0]}/{requested[1]} contradicts the launcher, which made this "
                f"rank {self.rank} of {self.world_size}: under a launcher leave --shard out (each "
                "rank builds its own share)"
            )
        return self.rank, self.world_size

    def device(self, requested: str) -> torch.device:
        """``--device``: ``auto`` is the GPU (under a launcher ``cuda:LOCAL_RANK``, one per
        rank) or the CPU; ``cuda`` under a launcher is the rank's GPU too."""
        if requested == "auto":
            requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cuda" and self.launched:
            return torch.device("cuda", self.local_rank)
        return torch.device(requested)

    def refuse(self, program: str, message: str) -> int:
        """A refusal every rank reaches alike (bad arguments): printed once per node, by
        its first rank (``launch_guard.refuse``). Returns the exit code."""
        return refuse(f"{program}: error: {message}", self.local_rank)


class Heartbeats:
    """Every rank's pulse on the job's store: a counter each rank raises every
    ``silence_s / BEATS_PER_SILENCE`` from a daemon thread (so a rank busy in a long
    encode keeps beating), and ``silent``: the ranks whose counter a waiting rank has not
    seen move for ``silence_s``. Counters, not clock times: nodes' clocks may differ.

    Each check reads every rank's counter at once (``multi_get``): one request per
    waiting rank and beat, whatever the world size.
    """

    def __init__(self, store: dist.Store, rank: int, world_size: int, silence_s: float):
        self.store, self.rank, self.world_size, self.silence_s = store, rank, world_size, silence_s
        self.period_s = silence_s / BEATS_PER_SILENCE
        self._stop = threading.Event()
        self._keys = [f"{BEAT_KEY}{r}" for r in range(world_size)]
        self._seen: dict[int, tuple[bytes, float]] = {}  # rank -> (counter, when it last moved)
        self._checked: float | None = None

    def start(self) -> None:
        self.store.add(self._keys[self.rank], 1)  # (a peer's check may come before the thread's first beat)
        threading.Thread(target=self._beat, name="divot-heartbeat", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _beat(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self.store.add(self._keys[self.rank], 1)
            except dist.DistError:  # the store's host is gone: the failure watch says so
                return

    def silent(self) -> list[int]:
        """The ranks not heard from for ``silence_s`` (read at most once a beat)."""
        now = time.monotonic()
        if self._checked is not None and now - self._checked < self.period_s:
            return []
        if self._checked is None:
            for key in self._keys:  # a counter not there yet would block multi_get: made here at 0
                self.store.add(key, 0)
        elif now - self._checked > self.silence_s / 2:
            self._seen.clear()  # this rank was held up itself (suspended?): nothing to judge by
        self._checked = now
        for rank, counter in enumerate(self.store.multi_get(self._keys)):
            if self._seen.get(rank, (None,))[0] != counter:
                self._seen[rank] = (counter, now)
        return [rank for rank, (_, moved) in self._seen.items() if now - moved > self.silence_s]


def silence_deadline() -> float:
    """``SILENCE_S``, or what ``DIVOT_RANK_SILENCE_S`` says.

    Raises:
        ValueError: the variable is not a number of seconds > 0.
    """
    raw = os.environ.get(SILENCE_ENV)
    if raw is None:
        return SILENCE_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"{SILENCE_ENV}={raw!r}: expected a number of seconds > 0")
    return seconds


def decide(store: dist.Store, outcome: str) -> str:
    """The build's outcome: ``outcome`` if no rank decided before, else theirs."""
    return store.compare_set(OUTCOME_KEY, "", outcome).decode()


class RankJob:
    """One process's part in a recipe run: stop signals, and under a launcher the
    process group, the failure report, the heartbeats and the final meeting of the ranks.

    Use as a context manager around the work; ``run`` reports an error the launcher's
    way. Alone (not launched) it only turns stop signals into ``stop_requested``.
    """

    def __init__(self, launch: Launch, log_dir: str | os.PathLike, program: str, log_name: str = "build.log"):
        self.launch, self.program = launch, program
        self.failure = FailureReport(log_dir, launch.rank, program=program, log_name=log_name)
        self.signals = StopSignals(launcher_poll_s=LAUNCHER_POLL_S)
        self.silence_s = silence_deadline()
        self._store: dist.Store | None = None  # the job's, while this rank is in the group
        self._heartbeats: Heartbeats | None = None
        self._outcome: str | None = None  # decided, as this rank read it
        self._outcome_checked = time.monotonic()
        self._in_group = False  # whether this job joined a process group it must leave

    def __enter__(self) -> RankJob:
        self.signals.install()
        if self.launch.launched:
            # gloo for the end's few small messages, also between GPU ranks: nothing big
            # travels, and every wait is a poll of the store (wait_for_all), not a collective
            dist.init_process_group("gloo", timeout=timedelta(minutes=30))
            self._in_group = True
            self.failure.watch()
            self._store = self.failure.board.store
            self._heartbeats = Heartbeats(
                self._store, self.launch.rank, self.launch.world_size, self.silence_s
            )
            self._heartbeats.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._leave_group()  # stopped (finish() was not reached): here
        self.signals.restore()

    def run(self, work: Callable[[], int]) -> int:
        """``work()``'s exit code; under a launcher an error in it is reported once for the
        launch and ends this process at once (the others see it and end too)."""
        if not self.launch.launched:
            return work()
        try:
            return work()
        except Exception as exc:  # every error: reported once for the launch, every rank stopped
            exit_now(self.failure.report(exc))
            raise  # not reached: exit_now ends the process

    # -------------------------------------------------------------- stopping

    def stop_requested(self) -> bool:
        """A stop signal came, the launch guard that started this rank is gone (killed
        outright: nobody else will stop the ranks), or the build was ended on another
        rank. Cheap: asked before every sample (the store is read every ``OUTCOME_POLL_S``)."""
        now = time.monotonic()
        if self._outcome is None and self._store is not None and now - self._outcome_checked > OUTCOME_POLL_S:
            self._outcome_checked = now
            if self._store.check([OUTCOME_KEY]):
                self._outcome = self._store.get(OUTCOME_KEY).decode()
        return self.signals.requested() or self._outcome not in (None, ALL_DONE)

    def stopped(self, done: str) -> int:
        """End after a stop: rank 0 says why, what was ``done`` and how to resume -- unless
        the stop was the launcher ending the ranks after one failed (that one said why).
        Returns the exit code."""
        if self.launch.rank == 0 and not self._peer_failed():
            print(f"stopped by {self._stop_cause()} ({done}); run the same command again to resume: "
                  "what is written is kept")  # fmt: skip
        return EXIT_INTERRUPTED

    def _stop_cause(self) -> str | None:
        if self._outcome is not None and self._outcome.startswith(STOPPED):
            return self._outcome.removeprefix(STOPPED)
        return self.signals.cause

    def _peer_failed(self) -> bool:
        board = self.failure.board
        try:
            return board is not None and board.own_failures() > 0
        except dist.DistError:  # the store's host is gone: it failed, or was stopped too
            return False

    # -------------------------------------------------------------- the end

    def wait_for_all(self) -> bool:
        """This rank is done or stopped: wait for the build's outcome -- True when every
        rank is done, False after a stop (here or on another rank). No collective: every
        wait is a poll of the store, however long another rank's share takes (a bigger
        share left to resume). A rank that fails ends the launch (the failure report); one
        killed outright is found by its heartbeat.

        Raises:
            SilentRanksError: a rank was not heard from for ``silence_s``.
        """
        if not self.launch.launched:
            return not self.stop_requested()
        outcome = self._outcome
        if outcome is None and self.signals.requested():
            outcome = decide(self._store, f"{STOPPED}{self.signals.cause} on rank {self.launch.rank}")
        if outcome is None:
            self._store.add(DONE_KEY, 1)
            outcome = self._await_outcome()
        return self._follow(outcome)

    def _await_outcome(self) -> str:
        store, world_size = self._store, self.launch.world_size
        while not store.check([OUTCOME_KEY]):
            if store.add(DONE_KEY, 0) >= world_size:
                return decide(store, ALL_DONE)
            if self.signals.requested():
                return decide(store, f"{STOPPED}{self.signals.cause} on rank {self.launch.rank}")
            silent = self._heartbeats.silent()
            if silent:
                return decide(store, SILENT + self._silence(silent))
            time.sleep(WAIT_POLL_S)
        return store.get(OUTCOME_KEY).decode()

    def _silence(self, ranks: list[int]) -> str:
        which = f"rank {ranks[0]}" if len(ranks) == 1 else "ranks " + ", ".join(map(str, ranks))
        return (
            f"{which} not heard from for {self.silence_s:g} s (killed? out of memory? its node "
            f"lost?), seen from rank {self.launch.rank}: the build stops; what is written is kept, "
            "run the same command again to resume"
        )

    def _follow(self, outcome: str) -> bool:
        """Act on the decided outcome: True when every rank is done; False after a stop,
        once this rank said it saw it (rank 0 may host the store: it waits for that)."""
        self._outcome = outcome
        if outcome.startswith(SILENT):
            raise SilentRanksError(outcome.removeprefix(SILENT))
        if outcome == ALL_DONE:
            return True
        self._stop_beating()  # the store's host may end first now: no failure
        self._store.add(SEEN_KEY, 1)
        if self.launch.rank == 0:
            deadline = time.monotonic() + STOP_ACK_WAIT_S
            while self._store.add(SEEN_KEY, 0) < self.launch.world_size and time.monotonic() < deadline:
                time.sleep(0.1)
        return False

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None on the others); after ``wait_for_all``."""
        if not self.launch.launched:
            return [obj]
        gathered: list[Any] | None = [None] * self.launch.world_size if self.launch.rank == 0 else None
        dist.gather_object(obj, gathered, dst=0)
        return gathered

    def finish(self) -> None:
        """Every rank here (rank 0's results written), then leave the process group: what
        follows (an upload) may take hours on one rank and must not hold the others."""
        if self.launch.launched:
            dist.barrier()
            self._leave_group()

    def _stop_beating(self) -> None:
        """Before this rank's end: the store's host may exit first, which is no failure."""
        self.failure.stop_watching()
        if self._heartbeats is not None:
            self._heartbeats.stop()

    def _leave_group(self) -> None:
        self._stop_beating()
        self._store = None
        if self._in_group:
            dist.destroy_process_group()
            self._in_group = False
