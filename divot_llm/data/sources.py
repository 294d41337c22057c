"""Raw samples from webdataset tar shards, jsonl files, folders of captioned media and
VidTok's CSV files of video paths.

Each source yields ``RawSample``s (media bytes or path + normalised text) in an order
that is a pure function of (seed, epoch, consumer), where a consumer is one dataloader
worker of one rank. Within an epoch the consumers partition the source: no sample is
read twice or skipped. The position in that order is the source's whole state, so a
resumed run continues exactly where it stopped without re-reading what it trained on.

Ordering: jsonl lines, CSV rows and folder files are shuffled globally (every line is
indexed by byte offset, every media file of a folder listed up front). Tar
shards are shuffled, dealt to consumers shard by shard (or sample by sample when there
are fewer shards than consumers), and the samples inside each shard are shuffled too;
``TarSource`` reads local shards' members by offset. Shards behind URLs or ``pipe:``
commands are read as streams by its subclass ``shard_stream.StreamTarSource``.

No single record stops a source. Everything that turns a record into a sample (read,
parse, check the fields' shapes and that they fit the source's task, resolve the media
path) -- and, through ``iterate``'s ``convert``, into a training example -- runs under a
per-record guard: a record that fails is skipped and counted under its reason, the first
few of each reason logged with their ``file:line`` or ``shard:key``. An exception no rule
foresaw is counted as ``unexpected_<ExceptionType>`` with its traceback logged. Shard-wide
problems (a corrupt, empty or truncated shard -- a truncated one keeps every complete
sample before the cut) are counted once per pass, by the one reader dealt the shard.

Only systemic problems raise ``DataError``, naming the source: no usable sample in a
whole pass over the source, or -- with ``max_skip_fraction`` -- more than that fraction of
a reader's records skipped as bad (size filters aside) once it has read
``SKIP_RATE_MIN_RECORDS``. A reader whose share of an epoch gives no sample (fewer samples
than readers, or a share of bad records) borrows on an infinite stream: it reads the whole
source, in an order of its own, until one sample comes out (what it skips there is another
reader's to count). A finite reader (validation) just ends.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import itertools
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from divot_llm.data.errors import DataError, RecordError

logger = logging.getLogger(__name__)

# Media extensions a sample may hold (lower case, as tar member extensions): what the
# readers take, and what the data recipes (data_recipes/) accept and copy into shards.
VIDEO_EXTS = ("mp4", "webm", "gif", "mkv", "avi", "mov")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
MEDIA_EXTS = frozenset(VIDEO_EXTS + IMAGE_EXTS)
CAPTION_SUFFIX = ".txt"  # a folder source's caption file: <name>.txt beside <name>.<ext>
_MEDIA_MARKERS = ("<video>", "<image>")  # Video-LLaVA puts these in the first question

# The text each task trains on (data/sequences.py): a caption, or question/answer turns.
TASK_TEXT = {"pretrain_comp": "captions", "pretrain_gen": "captions", "sft_gen": "captions", "sft_comp": "turns"}

# A reader's skip rate is checked against max_skip_fraction only after this many records,
# so that a few bad records at the start cannot stop a run.
SKIP_RATE_MIN_RECORDS = 100
NOT_SKIPS = ("truncated_kept",)  # counted with the skips, but the sample was used
# Records the settings filter out (min_resolution, min_aspect_ratio; no_motion_clip: a video
# too short for one data.motion clip): not bad data, so they do not count towards the skip
# rate (they do count as records read).
FILTERED = ("too_small", "bad_aspect_ratio", "no_motion_clip")


# ------------------------------------------------------------------------ samples


@dataclass
class RawSample:
    source: str  # source name from the config
    key: str  # where it came from: "shard.tar:key" or "file.jsonl:line"
    media_kind: str  # "video" | "image"
    media: bytes | Path  # file contents (tar) or a checked path (jsonl)
    captions: list[str] = field(default_factory=list)  # caption sources
    turns: list[tuple[str, str]] = field(default_factory=list)  # QA sources: (question, answer)


class SkipCounter(Counter):
    """Skipped samples per reason; logs the first few of each reason with where they were."""

    LOG_FIRST = 5  # an instance may set 0 to log nothing

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self[reason] += 1
        if self[reason] <= self.LOG_FIRST:
            logger.warning("skipping %s (%s)%s", where, reason, f": {detail}" if detail else "")
        elif self[reason] == self.LOG_FIRST + 1 and self.LOG_FIRST:
            logger.warning("more samples skipped for %s; counting them without logging", reason)

    def records(self) -> int:
        """Records lost, over every reason (``NOT_SKIPS`` excluded)."""
        return sum(n for reason, n in self.items() if reason not in NOT_SKIPS)


@dataclass(frozen=True)
class Consumer:
    """One reader of the stream: a dataloader worker of one rank."""

    index: int = 0
    count: int = 1

    @classmethod
    def of(cls, rank: int, world_size: int, worker: int, num_workers: int) -> Consumer:
        workers = max(1, num_workers)
        return cls(rank * workers + worker, world_size * workers)


# ------------------------------------------------------------------------ paths


class PathEscape(ValueError):
    """A path that would land outside its root."""


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that would land outside ``root``
    (absolute paths, ``..``, symlinks pointing out) with ``PathEscape``. A path the OS
    refuses (a NUL byte, a lone surrogate) raises ValueError, a name too long OSError, a
    symlink loop RuntimeError (pathlib's)."""
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise PathEscape(f"path {relative!r} escapes {root}")
    return candidate


def resolve_media(root: Path, relative: str) -> Path:
    """The media file ``relative`` names under ``root``.

    Raises:
        RecordError: ``unsafe_path`` (it escapes ``root``), ``bad_path`` (the OS refuses
            the name), ``missing_file`` (no such regular file).
    """
    try:
        path = safe_join(root, relative)
        is_file = path.is_file()
    except PathEscape as exc:
        raise RecordError("unsafe_path", str(exc)) from exc
    except (ValueError, OSError, RuntimeError) as exc:  # NUL byte, name too long, symlink loop, ...
        raise RecordError("bad_path", f"{relative!r}: {exc}") from exc
    if not is_file:
        raise RecordError("missing_file", escape_undecodable(str(path)))
    return path


def expand_paths(root: Path, patterns: list[str], source: str, folders: bool = False) -> list[Path]:
    """Regular files (``folders``: folders) matching the source's globs, all inside
    ``root``; none matching is an error (what a glob matches of the other kind, and
    special files, are left out)."""
    files = [path for pattern in patterns for path in glob_under(root, pattern, source, folders)]
    if not files:
        what = "folder" if folders else "file"
        raise DataError(f"source {source}: no {what} matches {patterns} under {root}")
    return files


def glob_under(root: Path, pattern: str, source: str, folders: bool = False) -> list[Path]:
    """The regular files (``folders``: folders) one glob matches under ``root``, sorted
    (possibly none).

    Raises:
        DataError: an absolute pattern or one with ``..``.
    """
    check_relative(pattern, f"source {source}: path")
    wanted = os.path.isdir if folders else os.path.isfile
    matched = sorted(glob.glob(str(root / pattern), recursive=True))
    return [safe_join(root, os.path.relpath(m, root)) for m in matched if wanted(m)]


def check_relative(path: str, what: str) -> None:
    """Raise DataError (``what`` names the path) for an absolute path or one with ``..``."""
    if os.path.isabs(path) or ".." in Path(path).parts:
        raise DataError(f"{what} {path!r} must be relative to data.root without '..'")


def escape_undecodable(text: str) -> str:
    """``text`` safe to log, hash and write as UTF-8 (unlike ``cli.display.printable``, nothing
    else is changed or cut, so keys stay exact): bytes that were not UTF-8 in a file name (kept by
    Python as lone surrogates) are written as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def stable_seed(*parts: object) -> list[int]:
    """Seed material from strings/ints that is the same in every process (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8", "backslashreplace")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


# ----------------------------------------------------------------------- parsing


def _clean_question(text: str) -> str:
    for marker in _MEDIA_MARKERS:
        text = text.replace(marker + "\n", "").replace(marker, "")
    return text.strip()


def _text(value: Any, name: str) -> str:
    """A text field: a string that is valid Unicode (JSON can spell a lone surrogate,
    ``"\\ud800"``, which no tokenizer can encode)."""
    if not isinstance(value, str):
        raise RecordError("bad_fields", f"{name!r} must be a string, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordError("bad_text", f"{name!r} is not valid Unicode ({exc.reason} at {exc.start})") from exc
    return value


def _texts(value: Any, name: str) -> list[str]:
    if not isinstance(value, list):
        raise RecordError("bad_fields", f"{name!r} must be a list of strings, not {type(value).__name__}")
    return [_text(item, f"{name}[{i}]") for i, item in enumerate(value)]


def parse_text(fields: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """(captions, QA turns) of a record's text fields, in any reference format
    (divot-reference §7.2): ``caption`` (a string or a list of strings), ``data``
    ([q1, a1, q2, a2, ...]), ``questions`` + ``answers`` (lists), ``question`` +
    ``answer`` (strings). Empty captions and turns are dropped; none is not an error.

    Raises:
        RecordError: ``bad_fields`` for a field of the wrong shape (a number, null, dict,
            nested list, a string where a list belongs, lists of different lengths),
            ``bad_text`` for text that is not valid Unicode.
    """
    if "caption" in fields:
        raw = fields["caption"]
        captions = [_text(raw, "caption")] if isinstance(raw, str) else _texts(raw, "caption")
        return [c.strip() for c in captions if c.strip()], []
    if "data" in fields:
        data = _texts(fields["data"], "data")
        if len(data) % 2:
            raise RecordError("bad_fields", "'data' must alternate question, answer (it has an odd length)")
        pairs = list(zip(data[0::2], data[1::2], strict=True))
    elif "questions" in fields:
        questions = _texts(fields["questions"], "questions")
        answers = _texts(fields.get("answers"), "answers")
        if len(questions) != len(answers):
            raise RecordError("bad_fields", f"{len(questions)} questions but {len(answers)} answers")
        pairs = list(zip(questions, answers, strict=True))
    elif "question" in fields:
        pairs = [(_text(fields["question"], "question"), _text(fields.get("answer"), "answer"))]
    else:
        return [], []
    turns = [(_clean_question(q), a.strip()) for q, a in pairs]
    return [], [(q, a) for q, a in turns if q and a]


def parse_annotation(line: dict) -> tuple[str, str, list[str], list[tuple[str, str]]]:
    """(media kind, media path, captions, QA turns) of one jsonl line in any reference
    format (see ``parse_text``). Raises RecordError naming what is wrong."""
    if "video" in line:
        kind = "video"
    elif "image" in line:
        kind = "image"
    else:
        raise RecordError("bad_fields", "no 'video' or 'image' field")
    path = line[kind]
    if not isinstance(path, str) or not path.strip():
        raise RecordError("bad_fields", f"{kind!r} must be a non-empty path string, not {type(path).__name__}")
    try:
        _text(path, kind)
    except RecordError as exc:
        # JSON can spell a lone surrogate; the OS would even take \udc80 as the byte 0x80,
        # but no annotation names a file that way
        raise RecordError("bad_path", exc.detail) from exc
    captions, turns = parse_text(line)
    return kind, path, captions, turns


def check_task_text(task: str | None, captions: list[str], turns: list[tuple[str, str]]) -> None:
    """Raise RecordError unless the record has the text its source's task trains on:
    ``wrong_task`` (QA turns in a caption source, a caption in a QA source) or
    ``empty_text``. ``task`` None accepts either."""
    need = TASK_TEXT.get(task) if task is not None else None
    if need == "captions" and not captions:
        if turns:
            raise RecordError("wrong_task", f"question/answer turns but no caption, in a {task} source")
        raise RecordError("empty_text")
    if need == "turns" and not turns:
        if captions:
            raise RecordError("wrong_task", f"a caption but no question/answer turns, in a {task} source")
        raise RecordError("empty_text")
    if not captions and not turns:
        raise RecordError("empty_text")


def skip_reason(exc: Exception) -> tuple[str, str]:
    """(reason, detail) of an exception raised while turning one record into a sample:
    its own ``reason`` (RecordError, MediaError, SequenceTooLong), or a generic
    ``unexpected_<ExceptionType>``."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason, str(getattr(exc, "detail", "") or "")
    if isinstance(exc, FileNotFoundError):
        return "missing_file", str(exc)
    if isinstance(exc, UnicodeEncodeError):  # text that reached a tokenizer unchecked
        return "bad_text", str(exc)
    return f"unexpected_{type(exc).__name__}", str(exc)


# ----------------------------------------------------------------------- sources


class Source:
    """Base: an epoch-ordered, consumer-partitioned, resumable stream of RawSamples.

    Args:
        task: the source's task (``TASK_TEXT``); records without its text are skipped
            (``wrong_task``). None accepts captions and QA turns alike.
        max_skip_fraction: raise DataError once more than this fraction of this reader's
            records were skipped (after ``SKIP_RATE_MIN_RECORDS``); None never does.
    """

    def __init__(
        self,
        name: str,
        seed: int,
        consumer: Consumer,
        infinite: bool,
        task: str | None = None,
        max_skip_fraction: float | None = None,
    ):
        if task is not None and task not in TASK_TEXT:
            raise ValueError(f"source {name}: unknown task {task!r} (one of {sorted(TASK_TEXT)})")
        self.name = name
        self.seed = seed
        self.consumer = consumer
        self.infinite = infinite
        self.task = task
        self.max_skip_fraction = max_skip_fraction
        self.skipped = SkipCounter()
        self.epoch = 0
        self.position = 0  # items of this consumer's epoch order already consumed
        self.used = 0  # records that became samples, over all epochs (for the skip rate)
        self.used_in_epoch = 0  # ... in this epoch (a reader with none borrows)
        self._borrowing = False  # reading another reader's share: nothing counted here
        self._told_borrowing = False

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "skipped": dict(self.skipped),
            "used": self.used,
            "used_in_epoch": self.used_in_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = SkipCounter(state.get("skipped", {}))
        self.used, self.used_in_epoch = int(state.get("used", 0)), int(state.get("used_in_epoch", 0))

    # -------------------------------------------------------------- counting

    def skip(self, reason: str, where: str, detail: str = "", error: BaseException | None = None) -> None:
        """Count one skipped record (or shard) under ``reason``; ``error``: an unexpected
        exception, whose traceback is logged with the first few."""
        if self._borrowing:
            return  # another reader's record: that reader counts it
        self.skipped.skip(reason, where, detail)
        if error is not None and self.skipped[reason] <= self.skipped.LOG_FIRST:
            logger.warning("source %s: unexpected %s on %s", self.name, type(error).__name__, where,
                           exc_info=error)  # fmt: skip

    def note(self, reason: str) -> None:
        """Count something that is not a skip (``truncated_kept``)."""
        if not self._borrowing:
            self.skipped[reason] += 1

    def _check_skip_rate(self) -> None:
        if self.max_skip_fraction is None or self._borrowing:
            return
        records = self.skipped.records() + self.used
        bad = self.skipped.records() - sum(self.skipped[reason] for reason in FILTERED)
        if records >= SKIP_RATE_MIN_RECORDS and bad > self.max_skip_fraction * records:
            raise DataError(
                f"source {self.name}: {bad} of the {records} records that reader {self.consumer.index} "
                f"of {self.consumer.count} read were bad, more than data.max_skip_fraction="
                f"{self.max_skip_fraction} (skipped: {self.skip_summary()}). The first few of each reason "
                "are logged above with their file:line or shard:key; fix the data, or raise "
                "data.max_skip_fraction to train on what is left."
            )

    def skip_summary(self) -> str:
        """The skip counts, most frequent first: ``"corrupt_video 3, bad_fields 1"``."""
        return ", ".join(f"{reason} {n}" for reason, n in self.skipped.most_common()) or "none"

    # ------------------------------------------------------------- iterating

    def __iter__(self) -> Iterator[RawSample]:
        return self.iterate()

    def iterate(self, convert: Callable[[RawSample], Any] | None = None) -> Iterator[Any]:
        """The samples of this reader, epoch after epoch (one pass if not infinite), each
        passed through ``convert`` (e.g. raw sample -> training example). A record whose
        reading or ``convert`` raises (anything but DataError), or that ``convert`` turns
        into None, is skipped; the rest are yielded and count as used."""
        while True:
            for borrowed, ref in self._resumed_refs(self.epoch):
                self.position += 1
                self._borrowing = borrowed
                result = self._record(ref, convert)
                if result is None:
                    self._check_skip_rate()
                    continue
                self.used_in_epoch += 1
                self.used += 0 if borrowed else 1
                yield result
            self._borrowing = False
            if self.infinite and self.used_in_epoch == 0:
                raise DataError(
                    f"source {self.name} has no usable sample: a whole pass over it in epoch {self.epoch} "
                    f"gave none (skipped: {self.skip_summary()}). The first few of each reason are logged "
                    "above with their file:line or shard:key."
                )
            if not self.infinite:
                return
            self.epoch, self.position, self.used_in_epoch = self.epoch + 1, 0, 0

    def _resumed_refs(self, epoch: int) -> Iterator[tuple[bool, Any]]:
        """``_epoch_refs`` after the ``position`` records consumed before a checkpoint (they
        are listed again and passed over; a streamed source starts at its cursor instead)."""
        return itertools.islice(self._epoch_refs(epoch), self.position, None)

    def _epoch_refs(self, epoch: int) -> Iterator[tuple[bool, Any]]:
        """(borrowed, record) in this reader's order of an epoch: its share, then -- on an
        infinite stream whose share gave no sample -- the whole source in an order of its
        own until one sample comes out."""
        for ref in self._refs(epoch, self.consumer):
            yield False, ref
        if not self.infinite or self.used_in_epoch:
            return
        if not self._told_borrowing:
            logger.warning(
                "source %s: reader %d of %d got no sample from its share of epoch %d (fewer usable "
                "samples than readers); it reads from the whole source instead",
                self.name, self.consumer.index, self.consumer.count, epoch,
            )  # fmt: skip
            self._told_borrowing = True
        for ref in self._refs(epoch, Consumer(), salt=("borrowed", self.consumer.index)):
            if self.used_in_epoch:
                return
            yield True, ref

    def _record(self, ref: Any, convert: Callable[[RawSample], Any] | None) -> Any:
        """One record read and converted under the per-record guard; None if skipped."""
        try:
            raw = self._read(ref)
            if raw is None:
                return None
            result = raw if convert is None else convert(raw)
        except DataError:
            raise  # systemic: stops the run
        except Exception as exc:  # the guard: one record never stops an epoch
            reason, detail = skip_reason(exc)
            self.skip(reason, self._where(ref), detail, error=exc if reason.startswith("unexpected_") else None)
            return None
        return result

    def _refs(self, epoch: int, reader: Consumer, salt: tuple = ()) -> Iterator[Any]:
        """The records ``reader`` is dealt in an epoch (``salt`` varies the order)."""
        raise NotImplementedError

    def _read(self, ref: Any) -> RawSample | None:
        """The sample of a record; RecordError (or None after counting) if unusable."""
        raise NotImplementedError

    def _where(self, ref: Any) -> str:
        """A record's ``file:line`` or ``shard:key`` for messages."""
        raise NotImplementedError


class IndexedSource(Source):
    """Base of the sources whose records are all indexed up front (jsonl lines, folder
    files): shuffled globally per epoch and dealt to the readers one by one."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _refs(self, epoch, reader, salt=()):
        order = np.random.default_rng(stable_seed(self.seed, self.name, epoch, *salt)).permutation(len(self))
        for row in order[reader.index :: reader.count]:
            yield int(row)


class LineSource(IndexedSource):
    """Base of the sources whose records are the lines of text files (jsonl, CSV): every
    non-empty line indexed up front by byte offset and read back by seeking to it, the
    media paths relative to ``media_root``; keys are ``file:line``. With ``HEADER`` the
    first line of each file is its header (``_header``), not a record."""

    HEADER = False

    def __init__(self, name, files: list[Path], media_root: Path, seed=0, consumer=Consumer(), infinite=True,
                 task: str | None = None, max_skip_fraction: float | None = None):  # fmt: skip
        super().__init__(name, seed, consumer, infinite, task, max_skip_fraction)
        self.files = files
        self.media_root = media_root
        self._unreadable: dict[int, str] = {}  # file index -> why it could not be read
        self._headers: dict[int, Any] = {}  # file index -> its parsed header (HEADER)
        self._offsets = self._index_lines()  # (N, 3): file, line number, byte offset

    def _index_lines(self) -> np.ndarray:
        rows: list[tuple[int, int, int]] = []
        for f, path in enumerate(self.files):
            offset = 0
            try:
                with open(path, "rb") as handle:
                    for number, line in enumerate(handle, start=1):
                        if self.HEADER and number == 1:
                            self._headers[f] = self._header(path, line)
                        elif line.strip():
                            rows.append((f, number, offset))
                        offset += len(line)
            except OSError as exc:
                # the lines indexed so far are kept; one record stands for the rest
                self._unreadable[f] = str(exc)
                rows.append((f, 0, -1))
        return np.asarray(rows, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self._offsets)

    def _where(self, row: int) -> str:
        f, number, _ = (int(x) for x in self._offsets[row])
        return escape_undecodable(f"{self.files[f]}:{number}" if number else str(self.files[f]))

    def _read(self, row: int) -> RawSample | None:
        f, number, offset = (int(x) for x in self._offsets[row])
        if offset < 0:
            raise RecordError("unreadable_file", self._unreadable[f])
        try:
            with open(self.files[f], "rb") as handle:
                handle.seek(offset)
                line = handle.readline()
        except OSError as exc:
            raise RecordError("unreadable_file", str(exc)) from exc
        return self._parse(line, f, escape_undecodable(f"{self.files[f].name}:{number}"))

    def _header(self, path: Path, line: bytes) -> Any:
        """The parsed header line of a file (``HEADER``)."""
        raise NotImplementedError

    def _parse(self, raw: bytes, file: int, key: str) -> RawSample:
        """The sample of one line of file number ``file``."""
        raise NotImplementedError


class JsonlSource(LineSource):
    """Lines of jsonl files; media paths are relative to ``media_root``."""

    def _parse(self, raw: bytes, file: int, key: str) -> RawSample:
        try:
            line = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise RecordError("bad_json_line", str(exc)) from exc
        if not isinstance(line, dict):
            raise RecordError("bad_json_line", f"not a JSON object but {type(line).__name__}")
        kind, relative, captions, turns = parse_annotation(line)
        check_task_text(self.task, captions, turns)
        path = resolve_media(self.media_root, relative)
        return RawSample(self.name, key, kind, path, captions, turns)


class VidTokCsvSource(LineSource):
    """VidTok's layout: CSV files whose ``videos`` column names video files relative to
    ``media_root`` (VidTok's DATA_DIR; nested folders allowed). The first line of each
    file is its header; other columns are ignored. Records have no text.

    One row is one line (as the data recipes' tables): a quoted field must end on its own
    line, so a bad quote costs only its line. A line that is not valid UTF-8 is read as
    ISO-8859-1, the encoding VidTok reads its CSVs in. Bad rows are skipped and counted:
    ``bad_csv_line`` (bad quoting, more or fewer fields than the header), ``bad_fields``
    (an empty ``videos`` value), and ``resolve_media``'s reasons (``unsafe_path`` for a
    path leaving ``media_root``, ``missing_file``, ...).

    Raises:
        DataError: a file whose header has no ``videos`` column.
    """

    HEADER = True
    COLUMN = "videos"

    def __init__(self, name, files: list[Path], media_root: Path, seed=0, consumer=Consumer(), infinite=True,
                 max_skip_fraction: float | None = None):  # fmt: skip
        super().__init__(name, files, media_root, seed, consumer, infinite, None, max_skip_fraction)

    def _header(self, path: Path, line: bytes) -> tuple[int, int]:
        """(number of fields, index of the ``videos`` field)."""
        try:
            names = [n.strip() for n in _csv_fields(line.decode("utf-8-sig", "replace"))]
        except csv.Error:
            names = []
        if self.COLUMN not in names:
            raise DataError(
                f"source {self.name}: {escape_undecodable(str(path))} has no {self.COLUMN!r} column in its "
                f"header line {names} (VidTok's CSV: a header, then one video path per line)"
            )
        return len(names), names.index(self.COLUMN)

    def _parse(self, raw: bytes, file: int, key: str) -> RawSample:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("iso-8859-1")  # every byte is a character: never fails
        try:
            fields = _csv_fields(text)
        except csv.Error as exc:
            raise RecordError(
                "bad_csv_line", f"bad quoting (a quoted field must end on its line): {exc}"
            ) from exc
        width, column = self._headers[file]
        if len(fields) != width:
            raise RecordError("bad_csv_line", f"{len(fields)} fields, the header has {width}")
        relative = fields[column]
        if not relative.strip():
            raise RecordError("bad_fields", f"empty {self.COLUMN!r} value")
        return RawSample(self.name, key, "video", resolve_media(self.media_root, relative))


def _csv_fields(line: str) -> list[str]:
    """The fields of one CSV line; csv.Error for bad quoting (strict), a quote left open
    at the end of the line included."""
    return next(csv.reader([line.rstrip("\r\n")], strict=True), [])


class FolderSource(IndexedSource):
    """Video and image files below folders, each captioned by the ``<name>.txt`` beside it
    (one caption per non-empty line): the seed's layout, a folder of gifs. Keys are the
    files' paths relative to ``root``; a file without its ``.txt`` is skipped
    (``missing_caption``). Folders are searched recursively; folder symlinks are not
    followed, and a file or caption symlinked out of ``root`` is skipped (``unsafe_path``).

    Raises:
        DataError: ``task`` trains on question/answer turns, which a folder has not.
    """

    def __init__(self, name, folders: list[Path], root: Path, seed=0, consumer=Consumer(), infinite=True,
                 task: str | None = None, max_skip_fraction: float | None = None):  # fmt: skip
        super().__init__(name, seed, consumer, infinite, task, max_skip_fraction)
        if task is not None and TASK_TEXT[task] != "captions":
            raise DataError(
                f"source {name}: a folder source has captions (<name>{CAPTION_SUFFIX}) but no question/answer "
                f"turns, which task {task} trains on"
            )
        self.root = root.resolve()
        self.files = _media_files(self.root, folders)  # paths relative to root, sorted

    def __len__(self) -> int:
        return len(self.files)

    def _where(self, row: int) -> str:
        return escape_undecodable(str(self.root / self.files[row]))

    def _read(self, row: int) -> RawSample:
        relative = self.files[row]
        path = resolve_media(self.root, relative)
        kind = "video" if _extension(relative) in VIDEO_EXTS else "image"
        captions = self._captions(str(Path(relative).with_suffix(CAPTION_SUFFIX)))
        check_task_text(self.task, captions, [])
        return RawSample(self.name, escape_undecodable(relative), kind, path, captions)

    def _captions(self, relative: str) -> list[str]:
        try:
            text_path = resolve_media(self.root, relative)
        except RecordError as exc:
            if exc.reason != "missing_file":
                raise
            raise RecordError("missing_caption", escape_undecodable(relative)) from exc
        try:
            text = text_path.read_bytes().decode("utf-8")
        except OSError as exc:
            raise RecordError("unreadable_file", str(exc)) from exc
        except UnicodeDecodeError as exc:
            raise RecordError("bad_text", f"{escape_undecodable(relative)} is not UTF-8: {exc}") from exc
        return [line.strip() for line in text.splitlines() if line.strip()]


def _extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in os.path.basename(name) else ""


def _media_files(root: Path, folders: list[Path]) -> list[str]:
    """Paths relative to ``root`` of the video and image files below ``folders``, each once."""
    found: set[str] = set()
    for folder in folders:
        for parent, _, names in os.walk(folder):  # os.walk does not enter folder symlinks
            found.update(
                os.path.relpath(os.path.join(parent, n), root) for n in names if _extension(n) in MEDIA_EXTS
            )
    return sorted(found)


# The members a sample is made of (the rest of a tar is read past): what a streamed shard
# keeps in memory.
SAMPLE_MEMBERS = MEDIA_EXTS | {"txt", "json"}


@dataclass(frozen=True)
class _TarItem:
    key: str
    members: dict[str, tuple[int, int]]  # extension -> (data offset, size)
    # the last sample before a shard's cut: it may lack members that came after; if it is
    # unusable it is one with the cut, counted as the shard's truncated_shard
    at_cut: bool = False
    # the SAMPLE_MEMBERS' contents when read from a stream; None: read at their offsets
    data: dict[str, bytes] | None = None


@dataclass(frozen=True)
class _TarRef:
    """One record of a shard: a sample, or None for a shard without one (it still takes
    a position, so that the shard's problems are counted by exactly one reader)."""

    shard: Any  # a local shard's Path; a streamed shard's URL (shard_stream)
    item: _TarItem | None
    notices: tuple[tuple[str, str, str], ...] = ()  # the shard's problems (reason, where, detail)


class TarSource(Source):
    """webdataset shards: members ``<key>.<ext>`` grouped by key; media + ``.txt``/``.json``.

    Shards are local files read by random access (indexed, then each sample's members read
    at their offsets); ``shard_stream.StreamTarSource`` reads shards as streams instead."""

    def __init__(self, name, shards: list[Path], seed=0, consumer=Consumer(), infinite=True,
                 task: str | None = None, max_skip_fraction: float | None = None):  # fmt: skip
        super().__init__(name, seed, consumer, infinite, task, max_skip_fraction)
        self.shards = shards

    def _refs(self, epoch, reader, salt=()):
        shards, by_shard = self._dealt_shards(epoch, reader, salt)
        dealt = 0  # every record seen, when dealing samples
        for s in shards:
            shard = self.shards[int(s)]
            for ref in self._shard_refs(shard, self._shard_seed(epoch, salt, shard)):
                if not by_shard:
                    dealt += 1
                    if (dealt - 1) % reader.count != reader.index:
                        continue
                yield ref

    def _dealt_shards(self, epoch: int, reader: Consumer, salt: tuple) -> tuple[np.ndarray, bool]:
        """(shards to read, in order; whether they are dealt whole). The shards are shuffled
        per epoch and dealt whole when there are at least as many as readers (``reader``
        reads its share); otherwise every reader reads every shard and is dealt samples."""
        order = np.random.default_rng(stable_seed(self.seed, self.name, epoch, *salt)).permutation(
            len(self.shards)
        )
        by_shard = len(self.shards) >= reader.count
        return (order[reader.index :: reader.count] if by_shard else order), by_shard

    def _shard_seed(self, epoch: int, salt: tuple, shard: Any) -> list[int]:
        """The seed of the order of a shard's samples in an epoch."""
        return stable_seed(self.seed, self.name, epoch, *salt, self._shard_name(shard))

    def _shard_name(self, shard: Any) -> str:
        """What sample keys (``<shard name>:<key>``) and seeds call a shard: its file name."""
        return shard.name

    def _shard_where(self, shard: Any) -> str:
        """A shard as messages name it."""
        return escape_undecodable(str(shard))

    def _shard_refs(self, shard: Path, seed: list[int]) -> list[_TarRef]:
        """A shard's records in a seeded order, its problems attached to the first."""
        items, notices = self._index_shard(shard)
        refs = [_TarRef(shard, items[int(k)]) for k in np.random.default_rng(seed).permutation(len(items))]
        refs = refs or [_TarRef(shard, None)]
        refs[0] = replace(refs[0], notices=tuple(notices))
        return refs

    def _index_shard(self, shard: Path) -> tuple[list[_TarItem], list[tuple[str, str, str]]]:
        """The samples of a shard and its problems. Members are indexed until the tar
        ends or breaks; a shard cut short keeps every sample before the cut."""
        where = self._shard_where(shard)
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        notices: list[tuple[str, str, str]] = []
        try:
            size = shard.stat().st_size
            with tarfile.open(shard, "r:") as tar:
                stopped = self._index_members(tar, shard, groups, notices)
                end = tar.offset
            with open(shard, "rb") as handle:
                handle.seek(end)
                marker = handle.read(2 * tarfile.BLOCKSIZE)
        except OSError as exc:  # tarfile.ReadError is not one: an unreadable file
            return [], [("unreadable_shard", where, str(exc))]
        except Exception as exc:  # tarfile raises many types on garbage
            return [], [("corrupt_shard", where, f"{type(exc).__name__}: {exc}")]
        last = end_of_shard(groups, stopped, TarEnd(size, end, marker), where, notices)
        if not groups and not notices:
            notices.append(("empty_shard", where, "no sample in it"))
        return [_TarItem(key, members, at_cut=key == last) for key, members in groups.items()], notices

    def _index_members(self, tar: tarfile.TarFile, shard: Path, groups: dict, notices: list) -> str | None:
        """Add the shard's file members to ``groups``; why reading stopped early, or None."""
        try:
            for member in tar:
                named = self._member_key(notices, shard, member)
                if named is not None:
                    key, ext = named
                    groups.setdefault(key, {})[ext] = (member.offset_data, member.size)
        except Exception as exc:  # a cut inside a member, a broken header: keep what came before
            return f"{type(exc).__name__}: {exc}"
        return None

    def _member_key(self, notices: list, shard: Any, member: tarfile.TarInfo) -> tuple[str, str] | None:
        """(sample key, lower-case extension) of a file member ``<key>.<ext>``; None for
        other members, and for a path leaving the shard (noticed as unsafe_member_path)."""
        if not member.isfile():
            return None
        name = escape_undecodable(member.name)  # tarfile keeps non-UTF-8 bytes as surrogates
        if name.startswith("/") or ".." in Path(name).parts:
            notices.append(("unsafe_member_path", f"{self._shard_where(shard)}:{name}", ""))
            return None
        folder, base = os.path.split(name)
        if "." not in base:
            return None
        stem, ext = base.split(".", 1)  # webdataset: the key ends at the first dot
        return (f"{folder}/{stem}" if folder else stem), ext.lower()

    def _where(self, ref: _TarRef) -> str:
        where = self._shard_where(ref.shard)
        return where if ref.item is None else f"{where}:{ref.item.key}"

    def _read(self, ref: _TarRef) -> RawSample | None:
        for reason, where, detail in ref.notices:
            self.skip(reason, where, detail)
        if ref.item is None:
            return None
        try:
            return self._sample(ref.shard, ref.item)
        except RecordError:
            if ref.item.at_cut:
                return None  # incomplete at the cut: counted once, as the truncated_shard
            raise

    def _sample(self, shard: Any, item: _TarItem) -> RawSample:
        media_ext = next((e for e in VIDEO_EXTS if e in item.members), None)
        kind = "video"
        if media_ext is None:
            media_ext, kind = next((e for e in IMAGE_EXTS if e in item.members), None), "image"
        if media_ext is None:
            raise RecordError("no_media_member")
        exts = [media_ext, *(ext for ext in ("txt", "json") if ext in item.members)]
        try:
            data = self._member_bytes(shard, item, exts)
        except OSError as exc:
            raise RecordError("unreadable_member", str(exc)) from exc
        captions, turns = self._member_text(data.get("txt"), data.get("json"))
        check_task_text(self.task, captions, turns)
        key = f"{self._shard_name(shard)}:{item.key}"
        return RawSample(self.name, key, kind, data[media_ext], captions, turns)

    @staticmethod
    def _member_bytes(shard: Any, item: _TarItem, exts: list[str]) -> dict[str, bytes]:
        """The contents of a sample's members ``exts``: read from a stream already, or
        read at their offsets in the local shard."""
        if item.data is not None:
            return {ext: item.data[ext] for ext in exts}
        with open(shard, "rb") as handle:
            return {ext: _read_at(handle, *item.members[ext]) for ext in exts}

    def _member_text(self, text: bytes | None, meta: bytes | None) -> tuple[list[str], list[tuple[str, str]]]:
        """(captions, turns) of a sample: the ``.txt`` member is its caption; the ``.json``
        member may carry a caption or QA turns instead (the jsonl formats, ``parse_text``).
        Only what the source's task needs is read."""
        wants_turns = self.task is not None and TASK_TEXT[self.task] == "turns"
        if text is not None and not wants_turns:
            try:
                caption = text.decode("utf-8").strip()
            except UnicodeDecodeError as exc:
                raise RecordError("bad_text", f"the .txt member is not UTF-8: {exc}") from exc
            if caption:
                return [caption], []
        if meta is None:
            captions, turns = [], []
        else:
            try:
                fields = json.loads(meta)
            except (ValueError, RecursionError) as exc:
                raise RecordError("bad_json_member", str(exc)) from exc
            if not isinstance(fields, dict):
                raise RecordError("bad_json_member", f"not a JSON object but {type(fields).__name__}")
            captions, turns = parse_text(fields)
        if wants_turns and not turns and text is not None:
            raise RecordError("wrong_task", f"a .txt caption but no question/answer turns, in a {self.task} source")
        return captions, turns


def _read_at(handle, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise OSError(f"truncated member ({len(data)} of {size} bytes)")
    return data


@dataclass(frozen=True)
class TarEnd:
    """Where a shard's members ended: the next header's offset ``end`` (``tarfile``'s
    ``offset``), the shard's ``size`` and the bytes at ``end`` (up to two blocks)."""

    size: int
    end: int
    marker: bytes


def end_of_shard(groups: dict[str, dict[str, tuple[int, int]]], stopped: str | None, tar_end: TarEnd,
                 where: str, notices: list) -> str | None:  # fmt: skip
    """Judge how a shard ended, whether read by random access or as a stream. A complete
    tar ends with two zero blocks; tarfile stops silently at a cut between members or at a
    broken header, and raises at a cut inside one (``stopped``: why it raised). On a
    truncated shard the sample the cut went through (a member past ``size``) is removed
    from ``groups`` (the samples that may still hold it) and a ``truncated_shard`` notice
    added. Returns the key of the last sample when the cut came after it -- it may lack
    members that came after -- else None."""
    size, end = tar_end.size, tar_end.end
    if stopped is None and tar_end.marker == bytes(2 * tarfile.BLOCKSIZE):
        return None
    cut = [key for key, members in groups.items() if any(o + n > size for o, n in members.values())]
    for key in cut:  # the sample the cut went through
        del groups[key]
    if cut:
        detail = f"cut inside sample {cut[0]!r} ({size} bytes)"
    elif end + tarfile.BLOCKSIZE <= size:
        detail = f"unreadable from byte {end}{f' ({stopped})' if stopped else ''}"
    else:
        detail = f"cut after byte {end} (no end-of-archive marker)"
    notices.append(("truncated_shard", where, f"{detail}; the complete samples before it are kept"))
    return None if cut else next(reversed(groups), None)  # after a cut member: all complete
