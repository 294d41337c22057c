"""Reading recipe inputs without trusting them.

Annotation files come from the internet: ids and paths in them are checked before they
name a file or a tar member (``safe_relative_path``, ``webdataset_key``), links are
followed only where they stay under their root (``resolve_inside``), text must be valid
Unicode (``is_text``), rows are read with their line numbers -- one line, one row -- so
every skip can say ``file:line``, and media are opened with PyAV / PIL to catch missing
and corrupt files before they reach a shard. Nothing here raises on bad input: callers
get a reason string and count it in a ``SkipLog``.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TypeVar

from PIL import Image
from tqdm import tqdm

from data_recipes.shards import parallel_map
from divot_llm.cli.display import printable
from divot_llm.data.clip_sampling import probe_video
from divot_llm.data.errors import MediaError
from divot_llm.data.sources import safe_join

MAX_KEY_CHARS = 64  # tar (ustar) member names are limited to 100 characters
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")


# ------------------------------------------------------------------- paths and keys


def safe_relative_path(text: str) -> PurePosixPath | None:
    """``text`` as a relative path that stays under whatever root it is joined to, or
    None: empty, absolute (``/x``, ``C:\\x``, ``//host``), backslashes and any ``..``
    component are refused; ``.`` components are dropped."""
    if not isinstance(text, str) or not text.strip() or "\\" in text or "\x00" in text:
        return None
    if PureWindowsPath(text).drive:  # "C:x" is relative for POSIX but not on Windows
        return None
    path = PurePosixPath(text.strip())
    if path.is_absolute() or ".." in path.parts:
        return None
    parts = [p for p in path.parts if p != "."]
    return PurePosixPath(*parts) if parts else None


def is_text(text: str) -> bool:
    """Whether ``text`` is valid Unicode that was decoded without loss: JSON can spell a
    lone surrogate (``"\\ud800"``) and a file name that is not UTF-8 reaches Python as
    surrogates, neither of which can be written as UTF-8; U+FFFD marks bytes a file
    decoded with ``errors="replace"`` could not read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\ufffd" not in text


def webdataset_key(raw: str) -> str | None:
    """A sample key that is safe as a tar member name, or None for ids that are empty,
    absolute (``/x``, ``\\x``, ``C:x``) or contain ``..``.

    webdataset splits a member name at the first dot of its base name into key and
    extension, and a ``/`` would put members in a sub-folder, so dots, slashes and
    anything but letters, digits, ``_`` and ``-`` become ``_``. Long ids are cut and
    suffixed with a checksum to fit the tar name field.
    """
    raw = str(raw).strip()
    if not raw or raw[0] in "/\\" or ".." in raw or PureWindowsPath(raw).drive:
        return None
    key = _UNSAFE_KEY_CHARS.sub("_", raw)
    if len(key) > MAX_KEY_CHARS:
        key = f"{key[: MAX_KEY_CHARS - 9]}-{zlib.crc32(raw.encode()):08x}"
    return key


def media_extension(path: Path | PurePosixPath) -> str:
    """Lower-case extension without the dot, with ``jpeg`` spelled ``jpg`` (what the
    image sources read)."""
    ext = path.suffix.lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def resolve_inside(root: Path, relative: PurePosixPath) -> Path | None:
    """``root / relative`` with every link followed, or None when that leaves ``root``
    (a symlinked file or folder pointing outside it) or the OS cannot resolve the name.
    The training sources' check (``safe_join``), so recipes and training agree on what
    is inside a root."""
    try:
        return safe_join(root, str(relative))
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop
        return None


def is_file(path: Path) -> bool:
    """``path.is_file()``, False also for names the OS refuses (too long, ...)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def input_error(files: list[Path], folders: list[Path]) -> str | None:
    """An error message naming the first input that is not there, or None."""
    for path in files:
        if not path.is_file():
            return f"error: {path} is not a file"
    for path in folders:
        if not path.is_dir():
            return f"error: {path} is not a folder"
    return None


# --------------------------------------------------------------------------- skips


@dataclass
class SkipLog:
    """Counts skipped inputs per reason; every skip is one line naming where it came from.

    The first ``echo_limit`` lines of each reason are printed (through tqdm, so progress
    bars stay intact); all of them are kept for ``skipped.txt``.
    """

    echo_limit: int = 20
    counts: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self.counts[reason] += 1
        # printable: file names and json text may hold lone surrogates and control characters
        line = printable(f"skip {where} ({reason})" + (f": {detail}" if detail else ""), limit=2000)
        self.lines.append(line)
        if self.counts[reason] <= self.echo_limit:
            tqdm.write(line)
        elif self.counts[reason] == self.echo_limit + 1:
            tqdm.write(f"... more '{reason}' skips are listed in skipped.txt only")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "skipped nothing"
        return f"skipped {self.total}: " + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))


# ---------------------------------------------------------------- annotation files


def read_table(path: Path, skips: SkipLog) -> Iterator[tuple[str, dict[str, str]]]:
    """(``file:line``, row) for each row of a CSV (or ``.tsv``: tab-separated) file with
    a header.

    Every line is parsed on its own, so one bad line never costs another: a quote left
    open would make the csv module read on into the following lines and merge them
    silently into one field. A quoted field must therefore end on its own line. Lines
    with bad quoting, with more or fewer fields than the header, or not valid UTF-8 are
    skipped and counted with their line; blank lines are ignored."""
    delimiter = _delimiter(path)
    header: list[str] | None = None
    for number, line in _numbered_lines(path):
        if header is None:
            header = _header(line, delimiter)
            continue
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            values = _line_fields(line, delimiter)
        except csv.Error as exc:
            skips.skip("bad_row", where, _quoting_problem(exc))
            continue
        if len(values) != len(header):
            skips.skip("bad_row", where, f"{len(values)} fields, the header has {len(header)}")
        elif not all(is_text(v) for v in values):
            skips.skip("bad_encoding", where, "not valid UTF-8")
        else:
            yield where, dict(zip(header, values, strict=True))


def table_columns(path: Path) -> list[str]:
    """The header of a CSV/TSV file (empty for an empty file or an unreadable header)."""
    for _, line in _numbered_lines(path):
        return _header(line, _delimiter(path))
    return []


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    # newline="": lines end at \n, \r\n or \r and keep their ending (the csv module's way)
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:
        yield from enumerate(handle, start=1)


def _line_fields(line: str, delimiter: str) -> list[str]:
    """The fields of one line; csv.Error for bad quoting (strict: ``"a"b`` is an error,
    not ``ab``), including a quote still open at the end of the line."""
    return next(csv.reader([line.rstrip("\r\n")], delimiter=delimiter, strict=True), [])


def _header(line: str, delimiter: str) -> list[str]:
    try:
        return [name.strip() for name in _line_fields(line, delimiter)]
    except csv.Error:
        return []


def _quoting_problem(exc: csv.Error) -> str:
    if "unexpected end of data" in str(exc):
        return "unclosed quote (a quoted field must end on its own line)"
    return f"bad quoting: {exc}"


def read_json_records(path: Path, skips: SkipLog) -> Iterator[tuple[str, object]]:
    """(``file:line``, record) for each element of a JSON list file (Video-LLaVA's
    format) or each line of a JSON-lines file.

    A list is parsed element by element with the standard decoder (``raw_decode``) only
    to know each element's line; a syntax error ends the file, counted with its line.
    In JSON lines a bad line is skipped and the rest is read.
    """
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    start = len(text) - len(text.lstrip())
    if text[start : start + 1] == "[":
        yield from _json_list_records(path, text, start + 1, skips)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield f"{path}:{number}", json.loads(line)
            except json.JSONDecodeError as exc:
                skips.skip("bad_json", f"{path}:{number}", exc.msg)


def _json_list_records(path: Path, text: str, pos: int, skips: SkipLog) -> Iterator[tuple[str, object]]:
    decoder = json.JSONDecoder()
    line, counted_to = 1, 0
    while True:
        pos = _skip_space(text, pos)
        if text.startswith("]", pos):
            return
        line += text.count("\n", counted_to, pos)
        counted_to = pos
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            skips.skip("bad_json", f"{path}:{exc.lineno}", f"{exc.msg}; rest of the file not read")
            return
        yield f"{path}:{line}", record
        pos = _skip_space(text, pos)
        if text.startswith(",", pos):
            pos += 1
        elif not text.startswith("]", pos):
            bad_line = line + text.count("\n", counted_to, pos)
            skips.skip("bad_json", f"{path}:{bad_line}", "expected ',' or ']'; rest of the file not read")
            return


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


# --------------------------------------------------------------------------- media


@dataclass(frozen=True)
class VideoFacts:
    duration_s: float
    num_frames: int
    fps: float
    width: int
    height: int


def check_video(path: Path) -> VideoFacts | str:
    """The video's headers read with PyAV (and its first frame decoded), or the reason
    it cannot be used: ``missing_video``, ``corrupt_video``, ``no_frames``, ..."""
    if not is_file(path):
        return "missing_video"
    try:
        info = probe_video(path)
    except MediaError as exc:
        return exc.reason
    except Exception:  # a broken file can fail in ways PyAV does not wrap; never crash
        return "corrupt_video"
    if info.num_frames < 1 or info.fps <= 0:
        return "no_frames"
    return VideoFacts(info.num_frames / info.fps, info.num_frames, info.fps, info.width, info.height)


def check_image(path: Path) -> tuple[int, int] | str:
    """(width, height) of a fully decodable image, or ``missing_image``/``corrupt_image``.
    Decoding every pixel is what catches truncated downloads."""
    if not is_file(path):
        return "missing_image"
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except Exception:  # PIL raises many types for truncated/corrupt files
        return "corrupt_image"


Item = TypeVar("Item")
Facts = TypeVar("Facts")


def check_all(
    items: Sequence[Item],
    media: Callable[[Item], tuple[str, PurePosixPath]],
    root: Path,
    check: Callable[[Path], Facts | str],
    workers: int,
    skips: SkipLog,
    desc: str = "probe",
    unit: str = "file",
) -> list[tuple[Item, Facts]]:
    """Open every item's media file with ``check`` (in ``workers`` processes) and keep
    each item with what its check found, in order. ``media(item)`` gives the item's
    ``file:line`` and its media path under ``root``; a check that returns a string (a
    skip reason) skips the item, counted with that line and path."""
    located = [media(item) for item in items]
    results = parallel_map(check, [root / path for _, path in located], workers)
    accepted = []
    for item, (where, path), facts in tqdm(
        zip(items, located, results, strict=True), total=len(items), desc=desc, unit=unit
    ):
        if isinstance(facts, str):
            skips.skip(facts, where, str(path))
        else:
            accepted.append((item, facts))
    return accepted
