"""How a training run ends on an error: one message, the traceback in the log, every rank stopped.

An exception on any rank -- in the training loop, in a data-loader worker (torch hands
it to the rank), while saving a checkpoint -- goes through ``FailureReport.report``:

* the rank's full traceback is appended to ``<output_dir>/train.log``;
* one paragraph goes to stderr, once for the run: rank 0 prints its error, another rank
  prints one only if it differs from those already printed (ranks that read the same
  broken data fail alike; numbers are ignored in the comparison), and a rank that failed
  because another one did (a collective broke under it, or it saw another rank's failure
  first) stays quiet unless nobody said why;
* the other ranks -- maybe blocked in a collective that can no longer complete -- see the
  failure on the job's key-value store (``distributed.FailureBoard``) and end within
  seconds;
* a rank killed outright says nothing; if it was the store's host (rank 0 under
  ``deepspeed``), the others cannot agree on anything any more: one rank per node says
  so (``STORE_LOST``), the first it launched that is not rank 0.

The process then leaves at once (``exit_now``, ``EXIT_TRAINING_ERROR``): the usual exit
would tear down the process group and wait for ranks that are gone. A feature-cache build
under a launcher (``data_recipes.ranks``) ends on an error the same way.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from divot_llm.train.tracking import LOG_FILE, append_log

EXIT_TRAINING_ERROR = 1

RANK0_WAIT_S = 2.0  # another rank waits this long for rank 0 to say whether it failed alike
PEER_GRACE_S = 3.0  # a rank that saw another fail gives its own main thread this long to end
STORE_LOST = (
    "the job's store is gone: the process hosting it (rank 0 under deepspeed, the agent under "
    "torchrun) ended without saying why (killed? out of memory? its node lost?)"
)
LINGER_S = 3.0  # rank 0 (the store's host under deepspeed) waits for the others' posts

_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
# torch's zip writer reports a short write without errno: "unexpected pos 6272 vs 6164",
# "PytorchStreamWriter failed writing file ...: file write failed".
_SHORT_WRITE = re.compile(r"unexpected pos \d+ vs \d+|file write failed|PytorchStreamWriter failed")
# torch re-raises a worker's exception as the same type with the worker's traceback as text.
_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process (\d+)\.\nOriginal (Traceback.*)$", re.S)
# c10 errors append their C++ stack to the message.
_CPP_STACK = re.compile(r"\n(Exception raised from |frame #0:).*", re.S)
_COLLECTIVE_TEXT = re.compile(
    r"gloo|nccl|Connection (closed|reset) by peer|Broken pipe|ProcessGroup|collective", re.I
)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error); the partial write
    was removed and the previous checkpoint kept."""


# ------------------------------------------------------------------------ describing


def describe(exc: BaseException) -> str:
    """``exc`` as one paragraph: ``Type: message`` -- for an error raised in a data-loader
    worker, the worker's own error (torch wraps it in the worker's traceback); no C++
    stack dump; for a full disk, what was being written and the space left."""
    name, text, where = type(exc).__name__, str(exc), ""
    worker = _WORKER_ERROR.match(text)
    if worker:
        name, text = _final_exception(worker.group(2))
        where = f" (in data-loader worker {worker.group(1)})"
    if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
        target = exc.filename or ""
        text = f"{_NO_SPACE[exc.errno]}: {target}{_free_note(target)}" if target else _NO_SPACE[exc.errno]
    text = _CPP_STACK.sub("", text).strip()
    return f"{name}: {text}{where}"


def _final_exception(traceback_text: str) -> tuple[str, str]:
    """(short type name, message) of the last exception in a formatted traceback."""
    lines = traceback_text.rstrip().splitlines()
    last_frame = max((i for i, line in enumerate(lines) if line.startswith((" ", "Traceback"))), default=-1)
    qualified, _, message = "\n".join(lines[last_frame + 1 :]).partition(": ")
    return qualified.rsplit(".", 1)[-1], message


def is_collective_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a broken collective or lost rendezvous: what
    a rank sees when another rank died, rather than an error of its own."""
    import torch.distributed as dist

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, dist.DistError) or (
            type(exc) is RuntimeError and _COLLECTIVE_TEXT.search(str(exc))
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# ------------------------------------------------------------------------ disk full


def checkpoint_write_failure(
    exc: BaseException, partial: Path, kept: Path | None
) -> CheckpointWriteError | None:
    """The clear error for a checkpoint write that failed for want of space (or any other
    OS-level write error), after removing the partial ``.tmp-*`` folder; None when
    ``exc`` is not a write failure (the caller re-raises it).

    torch reports a short write without a cause; a probe write next to it then asks the
    file system for the reason (a full disk answers ENOSPC).
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = _NO_SPACE.get(exc.errno, exc.strerror or str(exc))
    elif isinstance(exc, RuntimeError) and _SHORT_WRITE.search(str(exc)):
        probe_error = _probe_write(partial.parent)
        if probe_error is not None and probe_error.errno is not None:
            reason = _NO_SPACE.get(probe_error.errno, probe_error.strerror or str(probe_error))
        else:
            reason = f"the write was cut short ({_CPP_STACK.sub('', str(exc)).strip()})"
    else:
        return None
    shutil.rmtree(partial, ignore_errors=True)
    previous = f"the previous checkpoint {kept} is kept" if kept else "there is no earlier checkpoint"
    remedy = "free some space (or lower train.keep_last)" if reason in _NO_SPACE.values() else "fix that"
    return CheckpointWriteError(
        f"{reason}: could not write checkpoint {partial}{_free_note(partial.parent)}. The partial "
        f"checkpoint was removed and {previous}; {remedy} and run the same command again to continue "
        "(train.resume=auto)."
    )


def _probe_write(folder: Path, size: int = 1 << 20) -> OSError | None:
    probe = folder / f".write-probe-{os.getpid()}"
    try:
        with probe.open("wb") as file:
            file.write(b"\0" * size)
            file.flush()
            os.fsync(file.fileno())
    except OSError as exc:
        return exc
    finally:
        probe.unlink(missing_ok=True)
    return None


def _free_note(path: str | os.PathLike) -> str:
    """`` (1.2 MiB free on /mnt)`` for the nearest existing folder of ``path``; "" if unknown."""
    folder = Path(path or ".").absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" ({_size(free)} free on {_mount_point(folder)})"


def _mount_point(path: Path) -> Path:
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


# ------------------------------------------------------------------------ reporting


class FailureReport:
    """Reports this rank's error once for the run and stops the others (module docstring).

    Args:
        output_dir: The run's output folder (its ``log_name``, ``train.log``, gets the tracebacks).
        rank: This process's rank.
        program: What the console line names (``divot-data features`` for a cache build).
        log_name: The log file in ``output_dir``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        rank: int,
        program: str = "divot-train",
        log_name: str = LOG_FILE,
    ):
        self.output_dir, self.rank = Path(output_dir), rank
        self.program, self.log_name = program, log_name
        self.board = None
        self._stop_watching: Callable[[], None] = lambda: None
        self._reporting = threading.Event()  # set once the main thread handles an error
        self._peer_failed = False
        self._store_lost = False

    def watch(self) -> None:
        """Start watching the other ranks (after the process group is initialised)."""
        from divot_llm.train.distributed import FailureBoard

        self.board = FailureBoard.of_job()
        if self.board is not None:
            self._stop_watching = self.board.watch(self._on_peer_failure)

    def stop_watching(self) -> None:
        """Before a normal end: the store's host may exit first, which is no failure."""
        self._stop_watching()

    def report(self, exc: BaseException) -> int:
        """Log ``exc``, print it if this rank should, tell the other ranks; returns the
        exit code."""
        self._reporting.set()
        summary = describe(exc)
        own = not (self._peer_failed or is_collective_failure(exc))
        log = self._log(exc, own)
        if not own and (self._store_lost or self._store_gone()):
            self._say_store_lost(log)
        elif self._should_print(summary, own):
            if not own:
                summary = f"another rank ended without saying why (killed? out of memory?); here: {summary}"
            print(f"{self.program}: error: {summary} [rank {self.rank}; {log}]", file=sys.stderr, flush=True)
        if self.rank == 0:
            self._linger()
        return EXIT_TRAINING_ERROR

    def quietly(self, action: Callable[[], None]) -> None:
        """Run a clean-up step after an error; its own error only goes to the log."""
        try:
            action()
        except Exception as exc:  # the run already failed: this is secondary
            self._append(f"rank {self.rank}: while cleaning up: {''.join(traceback.format_exception(exc))}")

    # -------------------------------------------------------------- internals

    def _log(self, exc: BaseException, own: bool) -> str:
        """Append the traceback to the log; what the console line says about it."""
        cause = "failed" if own else "failed after another rank did"
        text = f"rank {self.rank} {cause}:\n{''.join(traceback.format_exception(exc))}"
        path = self._append(text)
        if path is None:
            print(text, file=sys.stderr, flush=True)  # the only place it can go
            return "the log could not be written"
        return f"full traceback in {path}"

    def _append(self, text: str) -> Path | None:
        try:
            return append_log(self.output_dir, text, self.log_name)
        except OSError:
            return None

    def _should_print(self, summary: str, own: bool) -> bool:
        """Whether this rank prints ``summary`` -- its own error that no rank printed yet,
        or a broken collective that no rank explains -- after posting it on the board."""
        import torch.distributed as dist

        if self.board is None:
            return True  # one rank, or the process group never formed: nobody to agree with
        key = re.sub(r"\d+", "#", summary)
        try:
            if self._peer_failed and not own:
                say = False  # the rank that failed first says why
            elif own:
                if self.rank != 0:
                    self.board.read(0, RANK0_WAIT_S)  # rank 0 claims first when it failed alike
                say = self.board.claim(key)
            else:
                say = not self._someone_failed(RANK0_WAIT_S) and self.board.claim("lost:" + key)
            self.board.post(summary, own)
            return say
        except dist.DistError:  # the store's host is gone: nobody left to agree with
            return own

    def _someone_failed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.board.own_failures() == 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _linger(self) -> None:
        """Rank 0 hosts the store (under ``deepspeed``): keep it up until every rank has
        posted, so that they can still read and claim."""
        import torch.distributed as dist

        deadline = time.monotonic() + LINGER_S
        try:
            while self.board is not None and not self.board.all_posted() and time.monotonic() < deadline:
                time.sleep(0.1)
        except dist.DistError:
            pass

    def _store_gone(self) -> bool:
        """Whether the store's host has ended (this rank's main thread may hit it before
        the watch thread does)."""
        import torch.distributed as dist

        try:
            return self.board is not None and self.board.own_failures() < 0  # a read: raises if gone
        except dist.DistError:
            return True

    def _say_store_lost(self, log: str) -> None:
        """One line per node: ranks cannot agree without the store, so the first rank
        the node's launcher started says it -- on rank 0's node, rank 1 (rank 0 is the
        store's host under ``deepspeed``)."""
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank == 0 or (local_rank == 1 and self.rank == 1):
            print(f"{self.program}: error: {STORE_LOST} [rank {self.rank}; {log}]", file=sys.stderr, flush=True)

    def _on_peer_failure(self, store_lost: bool = False) -> None:
        """Watch thread: another rank failed (or the store's host is gone). The main
        thread gets ``PEER_GRACE_S`` to end by itself (a broken collective raises, it
        reports quietly); if it is still blocked -- in a collective that cannot complete
        -- the process ends here."""
        import torch.distributed as dist

        if self._reporting.is_set():
            return  # this rank's own failure, already being handled
        self._peer_failed, self._store_lost = True, store_lost
        try:
            self.board.post("stopped because another rank failed", own=False)
        except dist.DistError:
            pass
        if self._reporting.wait(PEER_GRACE_S):
            return
        if store_lost:
            path = self._append(f"rank {self.rank}: stopped: {STORE_LOST}")
            self._say_store_lost(f"see {path}" if path else "the log could not be written")
        else:
            self._append(f"rank {self.rank}: stopped: another rank failed (its error is logged above)")
        exit_now(EXIT_TRAINING_ERROR)


def exit_now(code: int) -> None:
    """End the process at once: flush what was written, skip interpreter teardown (it
    would join data workers and tear down a process group whose peers are gone)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)
