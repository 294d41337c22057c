"""webdataset shards read as streams: ``pipe:CMD``, ``http(s)://`` and ``s3://``/``gs://``
URLs (``shard_transport``), and the shard lists of webdataset sources.

A streamed shard is read front to back, never seeked (tarfile's stream mode), so the
order differs from a local shard's in one way only: a shard's samples are shuffled by a
seeded in-memory buffer (``data.stream.shuffle_buffer``, emptied at the shard's end, so
the order inside a shard depends on nothing before it) instead of a permutation of the
whole shard. The rest is ``TarSource``'s: the shard order is shuffled per epoch and dealt
to readers (rank x worker) as whole shards when there are enough, otherwise every reader
reads every shard and is dealt its samples -- record j of the shard at position p of the
epoch's order goes to reader (p + j) mod readers and the shard's problems to reader p mod
readers, so what one reader fails to read of a shard cannot shift the others' shares of the
next one, nor make two readers count its problems. The order is a pure function of
(seed, epoch, reader) while the shards read the same bytes.

Resume: besides the base position, the state holds a cursor -- (epoch, whether the reader
was borrowing, shards of its list finished, records passed in the current one). A resumed
reader opens no finished shard; it reads the current one again from its start, passing
over the records it had consumed: their bytes are read (a stream cannot seek) and fed
through the same seeded buffer, but no sample is made of them and no media decoded (that
happens in ``iterate``'s ``convert``). Replaying the buffer this way stands for saving its
contents. A reader that has consumed a shard's problems record, or its last sample of a
shard read to its end (the samples after it waiting in the buffer: so with a buffer of two
or more a problem-free shard's last sample finishes it), has finished the shard.

Faults: a transport failure mid-stream (``shard_transport.TransportError``: a reset or
short HTTP body, a command exiting non-zero, no byte for ``data.stream.timeout``) reads
the shard again, up to ``data.stream.retries`` times after ``retry_backoff`` x 2^k seconds,
passing over the samples already read (the buffer keeps its state, so a recovered read
gives exactly the uninterrupted order). After the last failure the rest of the shard is
skipped and counted once, as ``shard_read_error``, by the reader that read it (with
fewer shards than readers each reader reads every shard, and counts its own failures);
the run goes on. A tar that reaches a clean end of its transport but is cut or broken
counts as ``truncated_shard`` / ``corrupt_shard``, as a local shard does, keeping every
complete sample before the cut.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import logging
import tarfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from divot_llm.config.schema import StreamConfig
from divot_llm.data.errors import DataError
from divot_llm.data.shard_transport import (
    HTTP_SCHEMES,
    TransportError,
    command_argv,
    expand_braces,
    open_stream,
    shard_display,
    shard_file_name,
    shard_scheme,
)
from divot_llm.data.sources import (
    SAMPLE_MEMBERS,
    Consumer,
    TarEnd,
    TarSource,
    _TarItem,
    _TarRef,
    end_of_shard,
    glob_under,
    safe_join,
)

logger = logging.getLogger(__name__)

SHARD_READ_ERROR = "shard_read_error"  # the skip reason of a shard whose transport kept failing
_DRAIN_LIMIT = 1 << 20  # bytes read past the last member, looking for the end of the stream
_TAIL = 1 << 16  # bytes kept of the end of a stream: the end-of-archive marker is in them

T = TypeVar("T")
Shard = Path | str  # a local shard, or a streamed one's entry (URL or pipe:CMD)
_ONE_READER = Consumer()


# ------------------------------------------------------------------- shard lists


def list_shards(
    root: Path, key: str, paths: list[str], shard_list: str | None, commands: dict[str, str]
) -> list[Shard]:
    """The shards a webdataset source names (``key``: its config key, e.g.
    ``data.sources.webvid``), in order: each ``paths`` entry brace-expanded, local ones
    matched as globs under ``root``; then the lines of its ``shard_list`` file, brace-expanded
    but taken as written (no glob: a list of millions of shards is not matched against
    storage; read once per process while the file is unchanged). Local shards are
    ``Path``s inside ``root``, streamed ones their entries. A shard list may not hold
    ``pipe:`` commands: it is data, and its lines run no shell.

    Raises:
        DataError, naming the key (and line): no shards; local ``paths`` patterns matching
            no file; a missing shard list; an absolute or ``..`` local path; an entry of a
            scheme no transport reads; unbalanced braces; a bad command template.
    """
    check_commands(commands)
    shards: list[Shard] = []
    local_patterns: list[str] = []
    name = key.rsplit(".", 1)[-1]
    for index, entry in enumerate(paths):
        where = f"{key}.paths[{index}]"
        for expanded in _expanded(entry, where):
            if _checked_scheme(expanded, where, commands) is None:
                local_patterns.append(expanded)
                shards.extend(glob_under(root, expanded, name))
            else:
                shards.append(expanded)
    if local_patterns and not any(isinstance(shard, Path) for shard in shards):
        raise DataError(f"source {name}: no file matches {local_patterns} under {root} ({key}.paths)")
    if shard_list is not None:
        shards.extend(_shard_list(root, f"{key}.shard_list", shard_list, commands))
    if not shards:
        raise DataError(f"source {name} names no shard: set {key}.paths or {key}.shard_list")
    return shards


def _expanded(entry: str, where: str) -> list[str]:
    try:
        return expand_braces(entry)
    except ValueError as exc:  # unbalanced braces
        raise DataError(f"{where}: {exc}") from exc


def _shard_list(root: Path, key: str, shard_list: str, commands: dict[str, str]) -> tuple[Shard, ...]:
    """The shards of a shard list file, read once per process while the file is unchanged:
    the loader lists a source's shards at start-up, in its check and in each dataloader
    worker (forked from it, so the workers inherit what it read), ~0.9 s per million lines."""
    try:
        listing = safe_join(root, shard_list)
        stat = listing.stat()
    except (ValueError, OSError) as exc:  # PathEscape is a ValueError; no such file
        raise DataError(f"{key}: cannot read the shard list {shard_list!r} under {root}: {exc}") from exc
    version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return _read_shard_list(listing, version, root, key, shard_list, tuple(sorted(commands.items())))


@functools.lru_cache(maxsize=8)
def _read_shard_list(listing: Path, version: tuple[int, int, int], root: Path, key: str, shard_list: str,
                     commands: tuple[tuple[str, str], ...]) -> tuple[Shard, ...]:  # fmt: skip
    """``_listed_shards`` of one version (inode, size, mtime) of a shard list file."""
    return tuple(_listed_shards(listing, root, key, shard_list, dict(commands)))


def _listed_shards(
    listing: Path, root: Path, key: str, shard_list: str, commands: dict[str, str]
) -> Iterator[Shard]:
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (ValueError, OSError) as exc:  # gone since its stat, not UTF-8
        raise DataError(f"{key}: cannot read the shard list {shard_list!r} under {root}: {exc}") from exc
    readable = {*HTTP_SCHEMES, *commands}
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        try:
            entries = expand_braces(entry)
        except ValueError as exc:  # unbalanced braces
            raise DataError(f"{key} ({shard_list}:{number}): {exc}") from exc
        for expanded in entries:
            scheme = shard_scheme(expanded)
            if scheme in readable:  # most lines: no message made for them
                yield expanded
                continue
            where = f"{key} ({shard_list}:{number})"
            if scheme is None:
                yield _listed_local(root, expanded, where)
            elif scheme == "pipe":  # a list is data, maybe someone else's: its lines run no shell
                raise DataError(f"{where}: a shard list may not hold pipe: commands (put them in paths)")
            else:
                _checked_scheme(expanded, where, commands)


def _listed_local(root: Path, entry: str, where: str) -> Path:
    try:
        return safe_join(root, entry)
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from exc


def _checked_scheme(entry: str, where: str, commands: dict[str, str]) -> str | None:
    """The entry's scheme (None: a local path).

    Raises:
        DataError: a scheme no transport reads.
    """
    scheme = shard_scheme(entry)
    if scheme is None or scheme == "pipe" or scheme in HTTP_SCHEMES or scheme in commands:
        return scheme
    raise DataError(
        f"{where}: {shard_display(entry)!r} has the unknown shard scheme {scheme}:// (a local path, pipe:CMD, "
        f"http(s):// or a scheme of data.stream.commands: {', '.join(sorted(commands)) or 'none'})"
    )


def check_commands(commands: dict[str, str]) -> None:
    """Raise DataError, naming the key, for a command template that cannot be used."""
    for scheme, template in commands.items():
        key = f"data.stream.commands.{scheme}"
        if scheme in ("pipe", *HTTP_SCHEMES):
            raise DataError(f"{key}: {scheme} shards are read without a command template")
        try:
            command_argv(template, "x")
        except ValueError as exc:
            raise DataError(f"{key}: {exc}") from exc


def refuse_streams(key: str, kind: str, paths: list[str], shard_list: str | None) -> None:
    """Raise DataError, naming the key, for what only a webdataset source reads: a shard
    list, a URL or ``pipe:`` entry."""
    if shard_list is not None:
        raise DataError(f"{key}.shard_list: only a webdataset source reads a shard list (this one is {kind})")
    for index, entry in enumerate(paths):
        if shard_scheme(entry) is not None:
            raise DataError(
                f"{key}.paths[{index}]: {shard_display(entry)!r} is streamed, which only a webdataset source reads "
                f"(this one is {kind}: its paths are globs under data.root)"
            )


# ----------------------------------------------------------------------- source


@dataclass(frozen=True)
class _Cursor:
    """Where a reader is in an epoch's streamed shards: in its own share or borrowing,
    ``shards_done`` of its shard list finished, ``in_shard`` records of the next passed."""

    epoch: int = -1
    borrowing: bool = False
    shards_done: int = 0
    in_shard: int = 0


@dataclass
class _Group:
    """The members of the sample being read (a stream groups consecutive members)."""

    key: str
    members: dict[str, tuple[int, int]] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)

    def item(self, at_cut: bool = False) -> _TarItem:
        return _TarItem(self.key, self.members, at_cut=at_cut, data=self.data)


class StreamTarSource(TarSource):
    """webdataset shards read as streams (see the module's docstring). ``shards`` are
    URLs or ``pipe:`` entries, and local ``Path``s (read front to back too) when a source
    mixes both; ``stream`` is ``data.stream``."""

    def __init__(self, name, shards: list[Shard], stream: StreamConfig, seed=0, consumer=_ONE_READER,
                 infinite=True, task: str | None = None, max_skip_fraction: float | None = None):  # fmt: skip
        super().__init__(name, shards, seed, consumer, infinite, task, max_skip_fraction)
        self.stream = stream
        self._cursor = _Cursor()

    def state_dict(self) -> dict:
        return {**super().state_dict(), "shard_cursor": asdict(self._cursor)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._cursor = _Cursor(**state.get("shard_cursor", {}))

    def _shard_name(self, shard: Shard) -> str:
        return shard_file_name(shard)

    def _shard_where(self, shard: Shard) -> str:
        return shard_display(shard)

    def _resumed_refs(self, epoch: int) -> Iterator[tuple[bool, _TarRef]]:
        return self._epoch_refs(epoch)  # _refs start at the cursor: nothing to pass over here

    def _refs(self, epoch, reader, salt=()):
        borrowing = bool(salt)  # _epoch_refs salts only the borrowed pass
        start = self._cursor
        if start.epoch != epoch or start.borrowing != borrowing:
            if start.epoch == epoch and start.borrowing:
                return  # resumed while borrowing: the reader's own share was read before
            start = _Cursor(epoch, borrowing)
        shards, by_shard = self._dealt_shards(epoch, reader, salt)
        for position in range(start.shards_done, len(shards)):
            shard = self.shards[int(shards[position])]
            passed = start.in_shard if position == start.shards_done else 0
            records = self._shard_records(shard, self._shard_seed(epoch, salt, shard), passed)
            mine = self._own_records(records, position, passed, by_shard, reader)
            for (emitted, ref), last in _last_known(mine):
                # past its last record (the problems record always is) the shard is
                # finished: a resumed reader opens it no more
                finished = last or ref.item is None
                self._cursor = _Cursor(epoch, borrowing, position + finished, 0 if finished else emitted)
                yield ref

    @staticmethod
    def _own_records(records: Iterator[tuple[_TarRef, bool]], position: int, passed: int, by_shard: bool,
                     reader: Consumer) -> Iterator[tuple[tuple[int, _TarRef], bool]]:  # fmt: skip
        """The records of a shard (at ``position`` of the epoch's order) that are
        ``reader``'s, numbered in the shard from ``passed + 1``, with their ``settled`` flags."""
        for emitted, (ref, settled) in enumerate(records, start=passed + 1):
            if ref.item is None:  # the shard's problems: its last record
                ref = _own_notices(ref, by_shard or _dealt(position, 0, reader))
                if ref.notices:
                    yield (emitted, ref), settled
            elif by_shard or _dealt(position, emitted - 1, reader):
                yield (emitted, ref), settled

    def _shard_records(self, shard: Shard, seed: list[int], passed: int) -> Iterator[tuple[_TarRef, bool]]:
        """A shard's records in its seeded order after the first ``passed``: its samples
        through the shuffle buffer, then one record holding its problems, if it has any.
        That record is never passed over: a reader that consumed it finished the shard
        (``_refs``), so a resumed read that fails before ``passed`` still yields it. Each
        comes with ``settled``: the shard has been read to its end, the records after this
        one wait in memory (the buffer's rest, the problems)."""
        notices: list[tuple[str, str, str]] = []
        rng = np.random.default_rng(seed)
        read_to_end = False

        def samples_then_end(samples: Iterator[_TarItem]) -> Iterator[_TarItem]:
            nonlocal read_to_end
            yield from samples
            read_to_end = True

        with contextlib.closing(self._samples_with_retries(shard, notices)) as samples:
            buffered = shuffled(samples_then_end(samples), self.stream.shuffle_buffer, rng)
            for emitted, item in enumerate(buffered, start=1):
                if emitted > passed:
                    yield _TarRef(shard, item), read_to_end
        if notices:
            yield _TarRef(shard, None, tuple(notices)), True

    def _samples_with_retries(self, shard: Shard, notices: list) -> Iterator[_TarItem]:
        """A shard's samples in tar order; after a transport failure the shard is read
        again from its start, the samples already read passed over. ``notices`` gets the
        problems of the last read (each read sees the whole tar), and ``shard_read_error``
        when the retries ran out."""
        read = 0
        for attempt in itertools.count():
            notices.clear()
            try:
                with contextlib.closing(self._read_pass(shard, read, notices)) as items:
                    for item in items:
                        read += 1
                        yield item
                return
            except TransportError as exc:
                if exc.permanent or attempt >= self.stream.retries:
                    tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                    notices.append((SHARD_READ_ERROR, self._shard_where(shard),
                                    f"{exc} ({tries}); its rest is skipped after {read} samples"))  # fmt: skip
                    return
                delay = self.stream.retry_backoff * 2**attempt
                logger.warning(
                    "source %s: reading %s failed (%s); retry %d of %d in %g s, passing over its %d samples read",
                    self.name, self._shard_where(shard), exc, attempt + 1, self.stream.retries, delay, read,
                )  # fmt: skip
                time.sleep(delay)

    def _read_pass(self, shard: Shard, skip: int, notices: list) -> Iterator[_TarItem]:
        """One read of a shard from its start: its samples in tar order after the first
        ``skip`` (read past: their members' bytes are not kept). A sample is complete when
        the next one starts; the last is judged with the end of the tar (``end_of_shard``,
        as for a local shard).

        Raises:
            TransportError: the stream failed (whatever tarfile made of it).
        """
        where = self._shard_where(shard)
        with contextlib.closing(open_stream(shard, self.stream.timeout, self.stream.commands)) as raw:
            stream = _RecordingStream(raw)
            try:
                tar = tarfile.open(fileobj=stream, mode="r|")
            except Exception as exc:  # tarfile raises many types on garbage
                stream.raise_failure()
                notices.append(("corrupt_shard", where, f"{type(exc).__name__}: {exc}"))
                return
            group: _Group | None = None
            count = 0  # samples complete so far
            stopped = None
            try:
                for member in iter(tar.next, None):
                    # tarfile keeps every header it reads (for getmembers): a stream read
                    # front to back needs none of them, and a shard may hold millions
                    tar.members.clear()
                    named = self._member_key(notices, shard, member)
                    if named is None:
                        continue
                    key, ext = named
                    if group is None or key != group.key:
                        if group is not None:
                            if count >= skip:
                                yield group.item()
                            count += 1
                        group = _Group(key)
                    group.members[ext] = (member.offset_data, member.size)
                    if count >= skip and ext in SAMPLE_MEMBERS:
                        group.data[ext] = tar.extractfile(member).read()
            except Exception as exc:  # a cut inside a member, a broken header: keep what came before
                stream.raise_failure()
                stopped = f"{type(exc).__name__}: {exc}"
            tar_end = stream.tar_end(tar.offset)  # reads to the stream's end: a command's exit status
            last = {group.key: group.members} if group is not None else {}
            at_cut = end_of_shard(last, stopped, tar_end, where, notices)
            if last and count >= skip:
                yield group.item(at_cut=at_cut == group.key)
            if not last and not notices:
                notices.append(("empty_shard", where, "no sample in it"))


def _dealt(position: int, index: int, reader: Consumer) -> bool:
    """Whether record ``index`` of a shard that every reader reads (at ``position`` of the
    epoch's order) is ``reader``'s: sample j goes to reader (position + j) mod readers, the
    shard's problems to reader position mod readers as a local shard's (on its record 0),
    whatever number of samples each reader's read gave."""
    return (position + index) % reader.count == reader.index


def _last_known(records: Iterable[tuple[T, bool]]) -> Iterator[tuple[T, bool]]:
    """Each ``(record, settled)`` as ``(record, last)``: whether no record follows it, where
    that costs no reading -- a settled record (the rest is in memory) is handed on after
    looking one ahead; an unsettled one at once, as not the last."""
    held: list[T] = []  # a settled record waiting for the next to show it is not the last
    for record, settled in records:
        if held:
            yield held.pop(), False
        if settled:
            held.append(record)
        else:
            yield record, False
    if held:
        yield held.pop(), True


def _own_notices(ref: _TarRef, dealt: bool) -> _TarRef:
    """A shard's problems record as one reader counts it: its own failure to read the
    shard (another reader's read may have gone through), and the shard's other problems
    if they are dealt to it -- so each is counted once, whatever the readers' reads gave."""
    return replace(ref, notices=tuple(n for n in ref.notices if dealt or n[0] == SHARD_READ_ERROR))


def shuffled(items: Iterable[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """``items`` through a shuffle buffer of ``size``: each item joins the buffer and, once
    it is full, a random one leaves; the rest leave in random order at the end. The order
    depends only on the number of items, ``size`` and ``rng``'s state."""
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield _pop_random(buffer, rng)
    while buffer:
        yield _pop_random(buffer, rng)


def _pop_random(buffer: list[T], rng: np.random.Generator) -> T:
    index = int(rng.integers(len(buffer)))
    buffer[index], buffer[-1] = buffer[-1], buffer[index]
    return buffer.pop()


class _RecordingStream:
    """A shard stream as tarfile reads it, counting its bytes and keeping the last of them
    (where the end-of-archive marker is), and remembering a transport failure: tarfile may
    re-raise it as an error of its own."""

    def __init__(self, stream):
        self._stream = stream
        self.size = 0  # bytes read so far
        self._tail: collections.deque[bytes] = collections.deque()
        self._tail_size = 0
        self._failure: TransportError | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            data = self._stream.read(size if size > 0 else tarfile.RECORDSIZE)
        except TransportError as exc:
            self._failure = exc
            raise
        self.size += len(data)
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size - len(self._tail[0]) >= _TAIL:
            self._tail_size -= len(self._tail.popleft())
        return data

    def raise_failure(self) -> None:
        """Raise the transport failure that stopped tarfile, if one did."""
        if self._failure is not None:
            raise self._failure

    def tar_end(self, end: int) -> TarEnd:
        """How the tar ended at ``end``, after reading the stream to its end (at most
        ``_DRAIN_LIMIT`` more bytes: beyond, the rest is not a tar's end anyway).

        Raises:
            TransportError: the stream failed there (a command exiting non-zero).
        """
        limit = self.size + _DRAIN_LIMIT
        while self.size < limit and self.read(tarfile.RECORDSIZE):
            pass
        tail = b"".join(self._tail)
        start = end - (self.size - len(tail))
        marker = tail[start : start + 2 * tarfile.BLOCKSIZE] if start >= 0 else b""
        return TarEnd(self.size, end, marker)
