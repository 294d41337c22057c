"""A data recipe on every rank of a launch: which share of the data this process builds,
on which device, how it stops, and how the ranks finish together.

Under a launcher (``torchrun``, ``deepspeed``: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in
the environment) rank R of W builds share R/W of every source -- the loader's own split
(``sources.Consumer``), as ``--shard R/W`` would -- on ``cuda:LOCAL_RANK`` (or the CPU).
The ranks join a gloo process group for the end only: a rank that is done waits, polling
the job's key-value store, for the others (however long their share takes, while still
answering a stop signal), then rank 0 gets every rank's result (``gather``).

Stopping: SIGTERM/SIGINT (or the end of the ``launch_guard`` that started the rank) ask
the build to stop between batches (``stop_requested``); what is written stays, and the
same command resumes. An error on one rank ends every rank within seconds, with one
message (``divot_llm.train.failures.FailureReport``, as in training: the traceback goes
to the log file, the other ranks see the failure on the job's store).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from divot_llm.cli.train import EXIT_INTERRUPTED  # divot-train's: 128 + SIGTERM
from divot_llm.launch_guard import Launcher
from divot_llm.train.distributed import FailureBoard
from divot_llm.train.failures import FailureReport, exit_now

EXIT_USAGE = 2
REFUSAL_GRACE_S = 5.0  # other ranks wait this long for a node's first rank to print a refusal
WAIT_POLL_S = 1.0  # a rank that is done looks this often whether the others are
LAUNCHER_POLL_S = 5.0  # how often a rank checks that its launch_guard is still there
DONE_KEY = "divot/recipe/done/"  # + rank: that rank's share is done
STOP_KEY = "divot/recipe/stop"  # a rank stopped (why): the others stop too


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
            # torchrun's name; the deepspeed launcher's is LOCAL_SIZE
            local_world_size=int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or "1"),
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
        its first rank; the others give it time to (the launcher ends every rank as soon
        as one exits with an error). Returns the exit code."""
        if self.local_rank == 0:
            print(f"{program}: error: {message}", file=sys.stderr, flush=True)
        else:
            time.sleep(REFUSAL_GRACE_S)  # normally cut short: the launcher ends this rank
        return EXIT_USAGE


class RankJob:
    """One process's part in a recipe run: stop signals, and under a launcher the
    process group, the failure report and the final meeting of the ranks.

    Use as a context manager around the work; ``run`` reports an error the launcher's
    way. Alone (not launched) it only turns stop signals into ``stop_requested``.
    """

    def __init__(self, launch: Launch, log_dir: str | os.PathLike, program: str, log_name: str = "build.log"):
        self.launch, self.program = launch, program
        self.failure = FailureReport(log_dir, launch.rank, program=program, log_name=log_name)
        self._stop_cause: str | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._launcher = Launcher.of_this_rank()  # launch/features.sh's guard, when it started us
        self._launcher_checked = 0.0
        self._in_group = False  # whether this job joined a process group it must leave

    def __enter__(self) -> RankJob:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
        if self.launch.launched:
            # gloo for the end's few small messages, also between GPU ranks: nothing big
            # travels, and every wait is a poll of the store (wait_for_all), not a collective
            dist.init_process_group("gloo", timeout=timedelta(minutes=30))
            self._in_group = True
            self.failure.watch()
        return self

    def __exit__(self, *exc_info) -> None:
        self.failure.stop_watching()  # a stopped rank may end before the store's host
        self._leave_group()  # stopped (finish() was not reached): here
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

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

    def _on_signal(self, signum, frame) -> None:
        if self._stop_cause is None:  # repeats (the launcher forwards what we also got) change nothing
            self._stop_cause = signal.Signals(signum).name

    def stop_requested(self) -> bool:
        """A stop signal came, or the launch guard that started this rank is gone (killed
        outright: nobody else will stop the ranks). Cheap: asked before every sample."""
        if self._stop_cause is None and self._launcher is not None:
            now = time.monotonic()
            if now - self._launcher_checked > LAUNCHER_POLL_S:
                self._launcher_checked = now
                if self._launcher.gone():
                    self._stop_cause = f"the end of its launcher (pid {self._launcher.pid})"
        return self._stop_cause is not None

    def stopped(self, done: str) -> int:
        """End after a stop: rank 0 says why, what was ``done`` and how to resume -- unless
        the stop was the launcher ending the ranks after one failed (that one said why).
        Returns the exit code."""
        if self.launch.rank == 0 and not self._peer_failed():
            print(f"stopped by {self._stop_cause} ({done}); run the same command again to resume: "
                  "what is written is kept")  # fmt: skip
        return EXIT_INTERRUPTED

    def _peer_failed(self) -> bool:
        board = self.failure.board
        try:
            return board is not None and board.own_failures() > 0
        except dist.DistError:  # the store's host is gone: it failed, or was stopped too
            return False

    # -------------------------------------------------------------- the end

    def wait_for_all(self) -> bool:
        """This rank is done: wait until every rank is (True), or until a stop signal came
        here or to another rank (False; a stopped rank tells the others). No timeout: a
        rank that fails ends the launch (the failure report, the launcher), and one that
        takes long -- a bigger share left to resume -- is waited for by polling the store,
        never blocked in a collective."""
        if not self.launch.launched:
            return not self.stop_requested()
        store = FailureBoard.of_job().store
        if self.stop_requested():
            store.set(STOP_KEY, f"{self._stop_cause} on rank {self.launch.rank}")
            return False
        store.set(f"{DONE_KEY}{self.launch.rank}", "1")
        done = [f"{DONE_KEY}{rank}" for rank in range(self.launch.world_size)]
        while not store.check(done):
            if store.check([STOP_KEY]):
                self._stop_cause = self._stop_cause or store.get(STOP_KEY).decode()
                return False
            if self.stop_requested():
                store.set(STOP_KEY, f"{self._stop_cause} on rank {self.launch.rank}")
                return False
            time.sleep(WAIT_POLL_S)
        return True

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
            self.failure.stop_watching()  # the store's host may now exit first: no failure
            self._leave_group()

    def _leave_group(self) -> None:
        if self._in_group:
            dist.destroy_process_group()
            self._in_group = False
