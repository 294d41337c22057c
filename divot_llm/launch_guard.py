"""``python -m divot_llm.launch_guard COMMAND...``: run a launcher so that stopping it
stops the training run properly. ``launch/*.sh`` put it in front of the ``deepspeed`` CLI.

On its own, the ``deepspeed`` launcher falls short: its runner (the pid a script or a
scheduler knows) has no signal handler on a single node, so killing it leaves the ranks
training as orphans; a Ctrl-C reaches every process at once, the runner returns before
the ranks have saved their checkpoint, and the per-node agent
(``deepspeed.launcher.launch``) SIGKILLs the ranks 30 s later -- in the middle of
writing a large checkpoint.

The guard (the pid to signal):

* starts the command in a session of its own, so that signals meant for the guard's
  process group (a terminal's Ctrl-C, ``kill -TERM -<pgid>``) reach the guard only;
* on SIGTERM, SIGINT or SIGHUP sends SIGTERM to the ranks -- the ``divot_llm.train``
  (or ``data_recipes``: a cache build) processes of its tree (not their data workers):
  they finish the step, save a checkpoint and exit 143 (a cache build: stop between
  batches), and the agent and runner follow. A rank that has not
  started yet gets it as soon as it appears. Without a local rank (a multi-node run
  started over pdsh, or none started 10 s after the stop) the command's process group
  gets the SIGTERM: deepspeed then stops what it started its own way;
* once the command has ended, asks any rank still running (its agent died) to stop the
  same way and waits for it, kills any other leftover process of its tree, and exits
  with the command's status (128 + N if it died of signal N) -- so its exit waits for
  the final checkpoint;
* tells the ranks who it is (``DIVOT_LAUNCHER``): a rank whose guard is gone (killed
  with SIGKILL, say) stops as after a SIGTERM (``Launcher``).

The rank side -- what a training run and a cache build share -- is here too:
``StopSignals`` (SIGTERM/SIGINT and the guard's end as one stop request) and ``refuse``
(a refusal printed once per node).
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import psutil

LAUNCHER_ENV = "DIVOT_LAUNCHER"  # "<host> <pid> <create time>" of the guard
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
POLL_S = 0.5  # how often the guard reads the process table (a stop signal is passed on at once)
NO_RANK_WAIT_S = 10.0  # after a stop, how long ranks may take to appear before the fallback
EXIT_USAGE = 2  # a refusal: bad arguments or config, the same on every rank
REFUSAL_GRACE_S = 10.0  # how long ranks other than a node's first wait for it to print a refusal


# ------------------------------------------------------------------------ rank side


class Launcher:
    """The guard that started this rank, seen from the rank (``of_this_rank``)."""

    def __init__(self, pid: int, created: float):
        self.pid, self.created = pid, created

    @classmethod
    def of_this_rank(cls) -> Launcher | None:
        """The guard named by ``DIVOT_LAUNCHER`` when it runs on this host; None without
        one (another launcher, or a rank on another node than its guard)."""
        host, pid, created = (os.environ.get(LAUNCHER_ENV, "").split(" ") + ["", "", ""])[:3]
        if host != socket.gethostname() or not pid.isdigit():
            return None
        return cls(int(pid), float(created or 0))

    def gone(self) -> bool:
        """Whether the guard has ended (exited, killed, a zombie, or its pid reused)."""
        try:
            process = psutil.Process(self.pid)
            with process.oneshot():
                return (
                    process.status() == psutil.STATUS_ZOMBIE
                    or abs(process.create_time() - self.created) > 0.01
                )
        except psutil.NoSuchProcess:
            return True


class StopSignals:
    """Why this rank should stop, if it should: SIGTERM or SIGINT came (``install``), the
    guard that started it is gone (killed outright: nobody else will stop the ranks), or
    its program said so (``stop``). The first cause wins: a launcher forwards a signal it
    receives to every rank, which often already got it from the terminal or the
    scheduler, and a repeat must change nothing (nor kill a checkpoint being written).

    Args:
        launcher_poll_s: How often ``requested`` reads the process table for the guard
            (0: every time; a cache build asks before every sample).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, launcher_poll_s: float = 0.0):
        self.cause: str | None = None
        self._launcher = Launcher.of_this_rank()  # launch/*.sh's guard, when it started us
        self._launcher_poll_s = launcher_poll_s
        self._launcher_checked = -math.inf
        self._previous_handlers: dict[int, Any] = {}

    def install(self) -> None:
        """SIGTERM/SIGINT from now on only note the stop (``requested`` tells)."""
        for signum in self.SIGNALS:
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        """The handlers from before ``install``."""
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    def stop(self, cause: str) -> None:
        """Stop for ``cause``, unless something asked first."""
        if self.cause is None:
            self.cause = cause

    def requested(self) -> bool:
        """Whether to stop (``cause`` says why)."""
        if self.cause is None and self._launcher is not None:
            now = time.monotonic()
            if now - self._launcher_checked >= self._launcher_poll_s:
                self._launcher_checked = now
                if self._launcher.gone():
                    self.stop(f"the end of its launcher (pid {self._launcher.pid})")
        return self.cause is not None

    def _on_signal(self, signum, frame) -> None:
        self.stop(signal.Signals(signum).name)


def refuse(message: str, local_rank: int) -> int:
    """A refusal every rank reaches alike (bad arguments, a config error): ``message`` is
    printed once per node, by its first rank; the others give it ``REFUSAL_GRACE_S`` to
    do so first -- the launcher ends every rank as soon as one exits with an error, and a
    rank that exited ahead of the first one under load would take the message down with
    it. Returns the exit code, ``EXIT_USAGE``."""
    if local_rank == 0:
        print(message, file=sys.stderr, flush=True)
    else:
        time.sleep(REFUSAL_GRACE_S)  # normally cut short: the launcher ends this rank
    return EXIT_USAGE


# ------------------------------------------------------------------------ guard side


# What a rank of launch/*.sh runs: training, or a cache build (launch/features.sh)
RANK_MODULES = {"divot_llm.train", "data_recipes"}
RANK_SCRIPTS = {"divot-train", "divot-data"}


def _runs_a_rank(process: psutil.Process) -> bool:
    """Whether ``process`` is ``python -m divot_llm.train`` (or ``divot-train``) or
    ``python -m data_recipes`` (``divot-data``); an agent that merely passes
    ``-m divot_llm.train`` on (torchrun) runs another module first."""
    try:
        argv = process.cmdline()
    except psutil.Error:
        return False
    if len(argv) > 1 and os.path.basename(argv[1]) in RANK_SCRIPTS:
        return True
    module = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "-m"), None)
    return module in RANK_MODULES


class ProcessTree:
    """The processes the command started, remembered as they appear (a process whose
    parent dies leaves the tree, but not this record)."""

    def __init__(self, root: int):
        self.root = psutil.Process(root)
        self.seen: dict[int, psutil.Process] = {}
        self.ranks: dict[int, psutil.Process] = {}
        self.signalled: set[int] = set()

    def refresh(self) -> None:
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            if child.pid in self.seen:
                continue
            self.seen[child.pid] = child
            try:
                parent = child.parent()
            except psutil.Error:
                parent = None
            if _runs_a_rank(child) and (parent is None or not _runs_a_rank(parent)):
                self.ranks[child.pid] = child

    def alive(self, processes: dict[int, psutil.Process]) -> list[psutil.Process]:
        return [p for p in processes.values() if _running(p)]

    def stop_ranks(self) -> int:
        """SIGTERM every live rank not signalled yet; how many ranks are live."""
        ranks = self.alive(self.ranks)
        for rank in ranks:
            if rank.pid not in self.signalled:
                self.signalled.add(rank.pid)
                _send(rank, signal.SIGTERM)
        return len(ranks)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _send(process: psutil.Process, signum: int) -> None:
    try:
        process.send_signal(signum)
    except psutil.Error:
        pass


def run(command: list[str]) -> int:
    """Run ``command`` under the guard; returns the exit status for the shell."""
    stops: list[int] = []
    woken = threading.Event()  # a stop wakes the loop below at once, not at its next poll

    def on_stop(signum, frame) -> None:
        stops.append(signum)
        woken.set()

    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup, a background job: stays ignored
            signal.signal(signum, on_stop)
    me = psutil.Process()
    env = {**os.environ, LAUNCHER_ENV: f"{socket.gethostname()} {me.pid} {me.create_time()}"}
    try:
        child = subprocess.Popen(command, env=env, start_new_session=True)
    except OSError as exc:
        print(f"launch_guard: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    tree = ProcessTree(child.pid)
    forwarded, stopped_at = False, None
    while child.poll() is None:
        tree.refresh()
        if stops and not forwarded:
            stopped_at = stopped_at or time.monotonic()
            forwarded = _forward_stop(tree, time.monotonic() - stopped_at)
        elif forwarded:
            tree.stop_ranks()  # ranks that started after the stop
        woken.wait(POLL_S)
        woken.clear()
    _finish(tree)
    code = child.returncode
    return 128 - code if code < 0 else code


def _forward_stop(tree: ProcessTree, waited: float) -> bool:
    """Pass a stop on to the local ranks; without any (ranks on other nodes only, or none
    started ``NO_RANK_WAIT_S`` after the stop), to the command's whole process group:
    deepspeed then stops what it started its own way. False: nobody to pass it to yet."""
    if tree.stop_ranks():
        return True
    if waited > NO_RANK_WAIT_S or any(_is_remote_shell(p) for p in tree.seen.values()):
        try:
            os.killpg(tree.root.pid, signal.SIGTERM)  # the command leads its own session
        except ProcessLookupError:
            pass
        return True
    return False


def _is_remote_shell(process: psutil.Process) -> bool:
    try:
        return process.name() in {"pdsh", "ssh"}
    except psutil.Error:
        return False


def _finish(tree: ProcessTree) -> None:
    """After the command: ranks still running are asked to stop and awaited; any other
    leftover is killed."""
    while tree.stop_ranks():
        time.sleep(POLL_S)
    for leftover in tree.alive(tree.seen):
        _send(leftover, signal.SIGKILL)


def main() -> None:
    command = sys.argv[1:]
    if not command:
        print("usage: python -m divot_llm.launch_guard COMMAND [ARG...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(run(command))


if __name__ == "__main__":
    main()
