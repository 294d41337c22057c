"""Process-group set-up that works the same under ``deepspeed``, ``torchrun`` and plain python.

The launchers differ only in the environment they set: ``deepspeed`` and ``torchrun`` set
``RANK``/``LOCAL_RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``; plain ``python``
sets none of them, and DeepSpeed would then try MPI discovery (and fail without
``mpi4py``). A single process therefore gets single-rank defaults here.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ranks_on_this_host() -> int:
    """The ranks the launcher started on this host: torchrun's ``LOCAL_WORLD_SIZE``, the
    deepspeed launcher's ``LOCAL_SIZE`` (it sets no ``LOCAL_WORLD_SIZE``); 1 without either."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or "1")


def set_single_process_defaults() -> None:
    """Single-rank environment for a run started without a launcher (no-op under one)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))


def init_distributed() -> DistInfo:
    """Initialise (or join the already initialised) process group and pick the device.

    On CPU the backend is gloo and DeepSpeed's shared-memory collective op is disabled:
    it would otherwise be JIT-compiled on every start (~70 s) for no gain at this scale.
    Idempotent, so in-process tests can share one group.
    """
    import deepspeed
    import deepspeed.ops

    set_single_process_defaults()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        if "OMP_NUM_THREADS" not in os.environ:  # ranks on one host would oversubscribe its cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_on_this_host()))
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(
        rank=dist.get_rank(), local_rank=local_rank, world_size=dist.get_world_size(), device=device
    )


def shutdown_distributed() -> None:
    """Barrier, then destroy the group: without it a rank sometimes aborts at exit
    ("terminate called without an active exception") and the launcher reports rc 250."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a few scalars, in one collective."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_min(value: int, device: torch.device) -> int:
    tensor = torch.tensor([value], dtype=torch.long, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (small, picklable), on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ------------------------------------------------------------------------ failures


class FailureBoard:
    """Which ranks failed and why, shared through the job's key-value store.

    Every launcher gives the process group a TCP key-value store (served by rank 0's
    process under ``deepspeed`` and plain env://, by the agent under ``torchrun``). It
    stays usable when collectives no longer are: a rank that raised never joins the next
    all-reduce, and the others would wait in it (with NCCL, until its timeout). So a rank
    that fails posts here, every rank's ``watch`` thread sees it within a second, and
    ranks that hit the same error agree on who prints it (``claim``).

    Store operations raise ``torch.distributed.DistError`` when the store is gone (its
    host process ended) or on a timeout; callers decide what that means.
    """

    PREFIX = "divot/failure/"

    def __init__(self, store: dist.Store, rank: int, world_size: int):
        self.store, self.rank, self.world_size = store, rank, world_size

    @classmethod
    def of_job(cls) -> FailureBoard | None:
        """The board of the initialised process group; None for a single rank."""
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return None
        return cls(dist.distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size())

    def post(self, summary: str, own: bool) -> None:
        """This rank failed: of its ``own`` error, or because another rank did."""
        self.store.set(self._key("rank", self.rank), ("own:" if own else "peer:") + summary)
        if own:
            self.store.add(self._key("own"), 1)

    def own_failures(self) -> int:
        """How many ranks posted an error of their own."""
        return self.store.add(self._key("own"), 0)

    def read(self, rank: int, timeout: float) -> tuple[bool, str] | None:
        """(own, summary) that ``rank`` posted, waiting up to ``timeout`` s; None if nothing."""
        key = self._key("rank", rank)
        try:
            self.store.wait([key], timedelta(seconds=timeout))
        except dist.DistStoreError:  # timed out
            return None
        kind, _, summary = self.store.get(key).decode().partition(":")
        return kind == "own", summary

    def all_posted(self) -> bool:
        return self.store.check([self._key("rank", r) for r in range(self.world_size)])

    def claim(self, text: str) -> bool:
        """True for the first rank to claim ``text`` (e.g. the error it is about to print)."""
        digest = hashlib.sha1(text.encode()).hexdigest()
        return self.store.add(self._key("said", digest), 1) == 1

    def watch(self, on_failure: Callable[[bool], None], poll: float = 1.0) -> Callable[[], None]:
        """Call ``on_failure(store_lost)`` (once, from a daemon thread) when any rank posts
        an error of its own (False) or the store goes away (True: its host process ended);
        returns the function that stops watching (call it before a normal end: the
        store's host exits first)."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(poll):
                store_lost = False
                try:
                    failed = self.own_failures() > 0
                except dist.DistError:
                    failed = store_lost = not stop.is_set()
                if failed:
                    on_failure(store_lost)
                    return

        threading.Thread(target=run, name="divot-failure-watch", daemon=True).start()
        return stop.set

    def _key(self, *parts: object) -> str:
        return self.PREFIX + "/".join(map(str, parts))
