"""How a data-loader worker treats stop signals: it ends when its rank says so, or dies with it.

The SIGTERM/SIGINT that a scheduler, a terminal's Ctrl-C or a launcher sends to every
process of a run are the rank's business: the trainer finishes its step, saves a
checkpoint and only then closes its loader. A worker that died of them would make torch
raise "DataLoader worker ... killed by signal" in its rank mid-step, before the save.
A worker that ignored every SIGTERM would make the rank's exit wait forever: torch's
shutdown and ``multiprocessing``'s exit-time clean-up end leftover workers with a
SIGTERM from the rank, then join them.

So ``worker_init_fn`` (given to every ``DataLoader`` of the loader) decides, first thing
in each worker:

* SIGINT is ignored (only a terminal sends it; the rank decides what a Ctrl-C means);
* SIGTERM is taken by a thread that ends the worker at once when the rank sent it
  (torch's shutdown, ``multiprocessing``'s exit) and drops it from anyone else -- the
  signal stays blocked in the worker's other threads so that thread alone receives it;
* the kernel kills the worker when its rank dies, however it dies (``PR_SET_PDEATHSIG``;
  strictly, when the rank's thread that started the loader ends: iterate a loader in the
  thread that lives as long as it), so no worker outlives its rank;
* nothing else is blocked, whatever mask the worker was forked with.

Outside Linux only the first and last points apply (no ``sigwaitinfo``/``prctl``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def worker_init_fn() -> Callable[[int], None]:
    """The ``DataLoader(worker_init_fn=...)`` of this process's workers (call it in the
    process that iterates the loader: the workers' parent)."""
    return functools.partial(take_signals_from_rank, os.getpid())


@contextlib.contextmanager
def stop_signals_deferred():
    """Hold SIGTERM/SIGINT while a data loader starts its workers (delivered right after).

    Data-loader workers are forked inside ``iter()``/``next()``. Until their first act --
    taking charge of their signals (``take_signals_from_rank``: a SIGTERM only from their
    rank ends them, SIGINT is ignored, they die with their rank) -- torch's worker handler
    would die on a SIGTERM/SIGINT sent to every process (a scheduler, Ctrl-C), and the
    rank would raise "DataLoader worker ... killed" instead of stopping cleanly (the
    trainer mid-step, before it could checkpoint; a cache build between batches). Forked
    with this mask, they keep such a signal pending until then.
    """
    stop = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def take_signals_from_rank(rank_pid: int, worker_id: int = 0) -> None:
    """Set up a freshly forked worker of ``rank_pid`` as the module docstring says."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform != "linux":
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        return
    signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGTERM})  # threads started below inherit it
    _die_with(rank_pid)
    threading.Thread(
        target=_end_on_sigterm_from, args=(rank_pid,), name="divot-worker-sigterm", daemon=True
    ).start()


def _end_on_sigterm_from(rank_pid: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == rank_pid:
            os._exit(0)  # what torch's own worker handler does for its parent's SIGTERM


def _die_with(rank_pid: int) -> None:
    """SIGKILL this process when its parent dies (torch's own watchdog only notices
    between two batches)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != rank_pid:  # the rank died before the request took effect
        os._exit(0)
