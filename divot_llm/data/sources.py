"""Raw samples from webdataset tar shards and jsonl files.

Each source yields ``RawSample``s (media bytes or path + normalised text) in an order
that is a pure function of (seed, epoch, consumer), where a consumer is one dataloader
worker of one rank. Within an epoch the consumers partition the source: no sample is
read twice or skipped. The position in that order is the source's whole state, so a
resumed run continues exactly where it stopped without re-reading what it trained on.

Ordering: jsonl lines are shuffled globally (every line is indexed by byte offset). Tar
shards are shuffled, dealt to consumers shard by shard (or sample by sample when there
are fewer shards than consumers), and the samples inside each shard are shuffled too;
tar members are read by offset, so shards must be local files (or a mounted store).

Bad data never stops a source: an unreadable shard, a member path outside the shard, a
bad json line (reported as file:line), a missing media file, a path outside the media
root, an empty caption -- each is skipped and counted under its reason.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

VIDEO_EXTS = ("mp4", "webm", "gif", "mkv", "avi", "mov")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")
_MEDIA_MARKERS = ("<video>", "<image>")  # Video-LLaVA puts these in the first question


class DataError(RuntimeError):
    """Data that cannot be used at all (no files, a source that yields nothing)."""


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

    LOG_FIRST = 5

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self[reason] += 1
        if self[reason] <= self.LOG_FIRST:
            logger.warning("skipping %s (%s)%s", where, reason, f": {detail}" if detail else "")
        elif self[reason] == self.LOG_FIRST + 1:
            logger.warning("more samples skipped for %s; counting them without logging", reason)


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


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything that would land outside ``root``
    (absolute paths, ``..``, symlinks pointing out)."""
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root.resolve()):
        raise ValueError(f"path {relative!r} escapes {root}")
    return candidate


def expand_paths(root: Path, patterns: list[str], source: str) -> list[Path]:
    """Files matching the source's globs, all inside ``root``; none matching is an error."""
    files: list[Path] = []
    for pattern in patterns:
        if os.path.isabs(pattern) or ".." in Path(pattern).parts:
            raise DataError(f"source {source}: path {pattern!r} must be relative to data.root without '..'")
        matched = sorted(glob.glob(str(root / pattern), recursive=True))
        files.extend(safe_join(root, os.path.relpath(m, root)) for m in matched)
    if not files:
        raise DataError(f"source {source}: no file matches {patterns} under {root}")
    return files


def stable_seed(*parts: object) -> list[int]:
    """Seed material from strings/ints that is the same in every process (unlike hash())."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]


# ----------------------------------------------------------------------- parsing


def _clean_question(text: str) -> str:
    for marker in _MEDIA_MARKERS:
        text = text.replace(marker + "\n", "").replace(marker, "")
    return text.strip()


def parse_annotation(line: dict) -> tuple[str, str, list[str], list[tuple[str, str]]]:
    """(media kind, media path, captions, QA turns) of one jsonl line in any reference
    format (divot-reference §7.2). Raises ValueError naming what is wrong."""
    if "video" in line:
        kind, path = "video", line["video"]
    elif "image" in line:
        kind, path = "image", line["image"]
    else:
        raise ValueError("no 'video' or 'image' field")
    if not isinstance(path, str) or not path:
        raise ValueError(f"bad {kind} path {path!r}")
    captions: list[str] = []
    turns: list[tuple[str, str]] = []
    if "caption" in line:
        raw = line["caption"]
        captions = [raw] if isinstance(raw, str) else list(raw)
        captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    elif "data" in line:  # [q1, a1, q2, a2, ...]
        data = line["data"]
        if len(data) % 2:
            raise ValueError("'data' must alternate question, answer")
        turns = list(zip(data[0::2], data[1::2], strict=True))
    elif "questions" in line:
        if len(line["questions"]) != len(line.get("answers", [])):
            raise ValueError("'questions' and 'answers' differ in length")
        turns = list(zip(line["questions"], line["answers"], strict=True))
    elif "question" in line:
        turns = [(line["question"], line.get("answer", ""))]
    turns = [(_clean_question(str(q)), str(a).strip()) for q, a in turns]
    turns = [(q, a) for q, a in turns if q and a]
    return kind, path, captions, turns


# ----------------------------------------------------------------------- sources


class Source:
    """Base: an epoch-ordered, consumer-partitioned, resumable stream of RawSamples."""

    def __init__(self, name: str, seed: int, consumer: Consumer, infinite: bool):
        self.name = name
        self.seed = seed
        self.consumer = consumer
        self.infinite = infinite
        self.skipped = SkipCounter()
        self.epoch = 0
        self.position = 0  # items of this consumer's epoch order already consumed

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "skipped": dict(self.skipped)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self.skipped = SkipCounter(state.get("skipped", {}))

    def __iter__(self) -> Iterator[RawSample]:
        while True:
            started_at, yielded = self.position, False
            for sample in self._epoch_samples(self.epoch, self.position):
                self.position += 1
                if sample is not None:
                    yielded = True
                    yield sample
            if self.position == 0:
                raise DataError(
                    f"source {self.name} has no sample for reader {self.consumer.index} of "
                    f"{self.consumer.count} (ranks x dataloader workers): fewer samples than readers"
                )
            if started_at == 0 and not yielded:
                raise DataError(
                    f"source {self.name} yielded no usable sample (skipped: {dict(self.skipped)})"
                )
            if not self.infinite:
                return
            self.epoch, self.position = self.epoch + 1, 0

    def _epoch_samples(self, epoch: int, start: int) -> Iterator[RawSample | None]:
        """This consumer's items of an epoch from position ``start``; None marks an item
        that was skipped (it still takes a position)."""
        raise NotImplementedError


class JsonlSource(Source):
    """Lines of jsonl files; media paths are relative to ``media_root``."""

    def __init__(self, name, files: list[Path], media_root: Path, seed=0, consumer=Consumer(), infinite=True):
        super().__init__(name, seed, consumer, infinite)
        self.files = files
        self.media_root = media_root
        self._offsets = self._index_lines()  # (N, 3): file, line number, byte offset

    def _index_lines(self) -> np.ndarray:
        rows = []
        for f, path in enumerate(self.files):
            offset = 0
            with open(path, "rb") as handle:
                for number, line in enumerate(handle, start=1):
                    if line.strip():
                        rows.append((f, number, offset))
                    offset += len(line)
        return np.asarray(rows, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self._offsets)

    def _epoch_samples(self, epoch, start):
        order = np.random.default_rng(stable_seed(self.seed, self.name, epoch)).permutation(
            len(self._offsets)
        )
        mine = order[self.consumer.index :: self.consumer.count]
        handles: dict[int, object] = {}
        try:
            for row in mine[start:]:
                f, number, offset = (int(x) for x in self._offsets[row])
                handle = handles.get(f) or handles.setdefault(f, open(self.files[f], "rb"))
                handle.seek(offset)
                yield self._parse(handle.readline(), f"{self.files[f].name}:{number}")
        finally:
            for handle in handles.values():
                handle.close()

    def _parse(self, raw: bytes, where: str) -> RawSample | None:
        try:
            line = json.loads(raw)
            if not isinstance(line, dict):
                raise ValueError("not a JSON object")
            kind, rel, captions, turns = parse_annotation(line)
        except (ValueError, TypeError, KeyError) as exc:
            self.skipped.skip("bad_json_line", where, str(exc))
            return None
        if not captions and not turns:
            self.skipped.skip("empty_text", where)
            return None
        try:
            path = safe_join(self.media_root, rel)
        except ValueError as exc:
            self.skipped.skip("unsafe_path", where, str(exc))
            return None
        if not path.is_file():
            self.skipped.skip("missing_file", where, str(path))
            return None
        return RawSample(self.name, where, kind, path, captions, turns)


@dataclass(frozen=True)
class _TarItem:
    key: str
    members: dict[str, tuple[int, int]]  # extension -> (data offset, size)


class TarSource(Source):
    """webdataset shards: members ``<key>.<ext>`` grouped by key; media + ``.txt``/``.json``."""

    def __init__(self, name, shards: list[Path], seed=0, consumer=Consumer(), infinite=True):
        super().__init__(name, seed, consumer, infinite)
        self.shards = shards

    def _epoch_samples(self, epoch, start):
        reader = self.consumer
        shard_order = np.random.default_rng(stable_seed(self.seed, self.name, epoch)).permutation(
            len(self.shards)
        )
        # Deal whole shards when there are enough of them; otherwise deal samples.
        by_shard = len(self.shards) >= reader.count
        shards = shard_order[reader.index :: reader.count] if by_shard else shard_order
        mine = 0  # this reader's positions so far
        dealt = 0  # every sample seen, when dealing samples
        for s in shards:
            shard = self.shards[int(s)]
            items = self._index_shard(shard)
            order = np.random.default_rng(stable_seed(self.seed, self.name, epoch, shard.name)).permutation(
                len(items)
            )
            for k in order:
                if not by_shard:
                    dealt += 1
                    if (dealt - 1) % reader.count != reader.index:
                        continue
                if mine >= start:
                    yield self._read(shard, items[int(k)])
                mine += 1

    def _index_shard(self, shard: Path) -> list[_TarItem]:
        groups: dict[str, dict[str, tuple[int, int]]] = {}
        try:
            size = shard.stat().st_size
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    if member.isfile():
                        self._add_member(groups, shard, member)
                # A complete tar ends with two zero blocks; tarfile stops silently at a
                # cut, so check: the last sample of a truncated shard may be incomplete.
                last_end = max((o + n for m in groups.values() for o, n in m.values()), default=0)
                truncated = last_end > size or size - tar.offset < 2 * tarfile.BLOCKSIZE
        except (tarfile.TarError, OSError) as exc:
            self.skipped.skip("corrupt_shard", shard.name, str(exc))
            return []
        if truncated and groups:
            self.skipped.skip("truncated_shard", shard.name, "the last sample is dropped")
            groups.popitem()
        return [_TarItem(key, members) for key, members in groups.items()]

    def _add_member(self, groups: dict, shard: Path, member: tarfile.TarInfo) -> None:
        name = member.name
        if name.startswith("/") or ".." in Path(name).parts:
            self.skipped.skip("unsafe_member_path", f"{shard.name}:{name}")
            return
        folder, base = os.path.split(name)
        if "." not in base:
            return
        stem, ext = base.split(".", 1)  # webdataset: the key ends at the first dot
        key = f"{folder}/{stem}" if folder else stem
        groups.setdefault(key, {})[ext.lower()] = (member.offset_data, member.size)

    def _read(self, shard: Path, item: _TarItem) -> RawSample | None:
        where = f"{shard.name}:{item.key}"
        media_ext = next((e for e in VIDEO_EXTS if e in item.members), None)
        kind = "video"
        if media_ext is None:
            media_ext, kind = next((e for e in IMAGE_EXTS if e in item.members), None), "image"
        if media_ext is None:
            self.skipped.skip("no_media_member", where)
            return None
        try:
            with open(shard, "rb") as handle:
                media = _read_at(handle, *item.members[media_ext])
                text = _read_at(handle, *item.members["txt"]).decode("utf-8") if "txt" in item.members else ""
                meta = json.loads(_read_at(handle, *item.members["json"])) if "json" in item.members else {}
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.skipped.skip("unreadable_member", where, str(exc))
            return None
        captions, turns = [text.strip()] if text.strip() else [], []
        if isinstance(meta, dict) and not captions:
            # a .json member may carry the text instead: a caption or QA turns (the
            # formats of the jsonl lines, see parse_annotation)
            try:
                _, _, captions, turns = parse_annotation({kind: where, **meta})
            except (ValueError, TypeError) as exc:
                self.skipped.skip("bad_json_member", where, str(exc))
                return None
        if not captions and not turns:
            self.skipped.skip("empty_text", where)
            return None
        return RawSample(self.name, where, kind, media, captions=captions, turns=turns)


def _read_at(handle, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise OSError(f"truncated member ({len(data)} of {size} bytes)")
    return data
