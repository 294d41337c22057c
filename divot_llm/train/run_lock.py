"""One training run per output folder: ``<train.output_dir>/run.lock``.

Two runs writing one folder would interleave checkpoints, metrics and configs without a
word, so rank 0 takes this lock before it writes anything, and every other rank learns
the outcome from it (``Trainer.setup``). The lock file says who holds it -- host, pid,
the process's start time, boot and pid namespace -- so a refusal names the holder.

Taking it: the file is created with ``O_CREAT | O_EXCL``, atomic on local file systems,
NFS v3+ and Lustre, so of two runs starting together exactly one creates it. Releasing
it (``RunLock.release``, at exit on every path the interpreter survives) deletes it when
it still names this process.

A stale lock -- its process died without releasing it (SIGKILL, OOM killer, a crash of
the interpreter) -- is taken over automatically only when it was written on this very
machine (same host name, boot and pid namespace), where "the process is gone" can be
checked: its pid no longer runs, is a zombie, or now belongs to a process started at
another time. A lock written by another host (or another container, or before a reboot)
is never taken over: that process cannot be seen from here, and file locks are not
reliable across nodes on every shared file system; the refusal says to delete the file
once that run is known to be gone.

Takeover rewrites the stale file in place under ``flock`` where the file system supports
it, so two runs taking over the same stale lock on one host cannot both win: the second
finds the first's (live) record once it gets the ``flock``. The ``flock`` is held only
for those few microseconds, never for the run, so forked data workers inherit nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import json
import os
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

LOCK_NAME = "run.lock"
_HAS_PROC = Path("/proc/self/stat").exists()  # Linux: process start times and states
SETTLE_SECONDS = 2.0  # how long a lock file being written (empty) or being taken over may be waited for


class RunLockedError(RuntimeError):
    """The output folder is used by another run (or its lock file cannot be read)."""


@dataclass(frozen=True)
class Holder:
    """The process that holds (or held) a lock, as written in the lock file."""

    host: str
    pid: int
    started: str  # ISO time the lock was taken, for people
    token: str  # random: tells this lock apart from a later one of the same pid
    boot_id: str | None = None  # /proc/sys/kernel/random/boot_id: a reboot gives a new one
    pid_ns: str | None = None  # /proc/self/ns/pid: containers on one host have their own pids
    pid_start: int | None = None  # /proc/<pid>/stat start time: tells a reused pid apart

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host} (since {self.started})"

    def same_machine(self) -> bool:
        """Written where this process runs, so its pid can be checked from here."""
        return (self.host, self.boot_id, self.pid_ns) == _machine()

    def is_running(self) -> bool:
        """On this machine (see ``same_machine``): the holder's process still runs."""
        started = _process_start(self.pid)
        if started is None:
            return False
        return self.pid_start is None or started == self.pid_start or started == -1


def this_process() -> Holder:
    host, boot_id, pid_ns = _machine()
    return Holder(
        host=host,
        pid=os.getpid(),
        started=datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        token=secrets.token_hex(8),
        boot_id=boot_id,
        pid_ns=pid_ns,
        pid_start=_process_start(os.getpid()),
    )


@functools.cache
def _machine() -> tuple[str, str | None, str | None]:
    """(host name, boot id, pid namespace) of this process: where a pid means one process."""
    return (
        socket.gethostname(),
        _read_first_line("/proc/sys/kernel/random/boot_id"),
        _readlink("/proc/self/ns/pid"),
    )


class RunLock:
    """A held lock on one output folder; ``release()`` (idempotent, also run at exit)."""

    def __init__(self, path: Path, holder: Holder, took_over: Holder | None = None):
        self.path, self.holder, self.took_over = path, holder, took_over
        atexit.register(self.release)

    def release(self) -> None:
        """Delete the lock file if it still names this lock (never another run's; never
        from a forked child)."""
        atexit.unregister(self.release)
        if os.getpid() != self.holder.pid:
            return
        with contextlib.suppress(OSError):
            if _read_holder(self.path.read_bytes()) == self.holder:
                self.path.unlink()


def acquire(output_dir: str | os.PathLike) -> RunLock:
    """Take the lock of ``output_dir`` (created if needed) for this process.

    Raises:
        RunLockedError: another live run holds it (named), a lock written on another
            machine is there, or the lock file cannot be read.
    """
    path = Path(output_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    me = this_process()
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        if _create(path, me):
            return RunLock(path, me)
        with _flocked(path) as fd:
            if fd is None:  # deleted by a release meanwhile, or another process is writing it
                data = _read_quietly(path)
            else:
                data = _read_all(fd)
                stale = _read_holder(data)
                if stale is not None and _is_stale(stale):
                    _rewrite(fd, me)
                    return RunLock(path, me, took_over=stale)
        holder = _read_holder(data)
        if (holder is not None and not _is_stale(holder)) or time.monotonic() > deadline:
            raise RunLockedError(_refusal(path, holder, bool(data)))
        time.sleep(0.05)  # being created, released or taken over by another process right now


def check_free(output_dir: str | os.PathLike) -> None:
    """Refuse (read-only) when a live run, or one on another machine, holds the lock of
    ``output_dir``; a stale lock of this machine passes (``acquire`` takes it over).

    Raises:
        RunLockedError: as ``acquire``.
    """
    path = Path(output_dir) / LOCK_NAME
    if not os.path.lexists(path):
        return
    try:
        data = _read_quietly(path)
    except OSError as exc:
        raise RunLockedError(_refusal(path, None, True, exc)) from exc
    holder = _read_holder(data)
    if holder is None and not data:
        return  # released meanwhile, or being written: acquire sorts that out
    if holder is None or not _is_stale(holder):
        raise RunLockedError(_refusal(path, holder, bool(data)))


# ----------------------------------------------------------------------------- file


def _create(path: Path, me: Holder) -> bool:
    """Create the lock file naming ``me``; False when one exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        return False
    try:
        _flock(fd)  # a reader waits for the record instead of finding an empty file
        _rewrite(fd, me)
    finally:
        os.close(fd)  # drops the flock
    return True


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[int | None]:
    """The existing lock file opened and ``flock``ed (where the file system can), or None
    when it vanished or another process holds the ``flock`` (it is mid-write)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield None
        return
    except OSError as exc:  # a directory, a link, no permission: not ours to touch
        raise RunLockedError(_refusal(path, None, True, exc)) from exc
    try:
        if not _flock(fd, blocking=False) or not _same_file(fd, path):
            yield None
        else:
            yield fd
    finally:
        os.close(fd)


def _flock(fd: int, blocking: bool = True) -> bool:
    """``flock`` ``fd``; True when held or when the file system has no flock (then the
    O_EXCL create alone guards the lock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK / EOPNOTSUPP: no flock on this file system
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    """``fd`` is still the file at ``path`` (not one deleted by a release meanwhile)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _rewrite(fd: int, me: Holder) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(asdict(me), indent=1) + "\n").encode(), 0)
    os.fsync(fd)


def _read_all(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


def _read_quietly(path: Path) -> bytes:
    """The lock file's bytes; empty when it is gone."""
    try:
        with path.open("rb") as file:
            return file.read(1 << 16)
    except FileNotFoundError:
        return b""


def _read_holder(data: bytes) -> Holder | None:
    """The holder recorded in ``data``; None when it is empty or not a lock record."""
    try:
        fields = json.loads(data)
        holder = Holder(**fields)
    except (ValueError, TypeError):
        return None
    optional_texts = (holder.boot_id, holder.pid_ns)
    if (
        not all(isinstance(text, str) for text in (holder.host, holder.started, holder.token))
        or type(holder.pid) is not int
        or holder.pid <= 0
        or not all(text is None or isinstance(text, str) for text in optional_texts)
        or not (holder.pid_start is None or type(holder.pid_start) is int)
    ):
        return None
    return holder


def _is_stale(holder: Holder) -> bool:
    return holder.same_machine() and not holder.is_running()


def _refusal(path: Path, holder: Holder | None, readable: bool, error: OSError | None = None) -> str:
    folder = path.parent
    if holder is None:
        what = f"cannot be read ({error})" if error else ("is not a lock record" if readable else "is empty")
        return (
            f"{folder} may be in use by another training run: its lock file {path} {what}. If no run "
            f"writes to {folder}, delete {path}; otherwise set another train.output_dir"
        )
    if holder.same_machine():
        return (
            f"{folder} is in use by another training run: {holder.describe()}, lock file {path}. Wait for "
            "it to finish or stop it, or set another train.output_dir"
        )
    return (
        f"{folder} is in use by another training run: {holder.describe()}, lock file {path}. That "
        "process runs on another machine (or container, or before a reboot), where it cannot be checked "
        f"from here: if it is gone, delete {path}; otherwise wait for it, or set another train.output_dir"
    )


# ----------------------------------------------------------------------------- /proc


def _process_start(pid: int) -> int | None:
    """Start time of a running process (clock ticks since boot), -1 where /proc cannot
    tell, None when no such process runs (zombies included: they are dead)."""
    if not _HAS_PROC:
        return _signal_probe(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return _signal_probe(pid)
    fields = stat[stat.rfind(")") + 2 :].split()  # the name may hold spaces and ')'
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _signal_probe(pid: int) -> int | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # another user's process: it runs
        pass
    return -1


def _read_first_line(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None
