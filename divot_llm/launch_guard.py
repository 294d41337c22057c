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
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import psutil

LAUNCHER_ENV = "DIVOT_LAUNCHER"  # "<host> <pid> <create time>" of the guard
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
POLL_S = 0.5  # a stop reaches the ranks within this; each poll reads the process table
NO_RANK_WAIT_S = 10.0  # after a stop, how long ranks may take to appear before the fallback


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
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # nohup, a background job: stays ignored
            signal.signal(signum, lambda signum, frame: stops.append(signum))
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
        time.sleep(POLL_S)
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
