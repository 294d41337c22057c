"""Writing what a recipe accepted: size-balanced webdataset shards and a manifest.

Recipes work in two passes. The scan checks every input and records, per accepted
sample, its members and their sizes; ``plan_shards`` then splits the samples into the
fewest shards within ``--max-shard-bytes`` / ``--max-shard-samples`` with the bytes
spread evenly (the last shard is not a runt: uneven shards leave ranks idle or waiting),
and ``write_shards`` writes them. Tar sizes are computed exactly, so no shard file
exceeds the byte limit unless a single sample does.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

TAR_BLOCK = 512
TAR_RECORD = 20 * TAR_BLOCK  # tarfile pads archives to whole records
SHARD_PATTERN = "shard-{:05d}.tar"


@dataclass(frozen=True)
class Sample:
    """One shard sample: members by extension, each bytes or a file to copy."""

    key: str
    members: dict[str, bytes | Path]

    def member_sizes(self) -> list[int]:
        return [len(v) if isinstance(v, bytes) else v.stat().st_size for v in self.members.values()]

    def tar_bytes(self) -> int:
        return sum(_member_tar_bytes(size) for size in self.member_sizes())

    def load(self) -> dict[str, bytes | str]:
        data = {ext: v if isinstance(v, bytes) else v.read_bytes() for ext, v in self.members.items()}
        return {"__key__": self.key, **data}


def _member_tar_bytes(size: int) -> int:
    return TAR_BLOCK + math.ceil(size / TAR_BLOCK) * TAR_BLOCK  # header + padded data


def tar_file_bytes(members_bytes: int) -> int:
    """Size of a tar holding members that take ``members_bytes`` (headers included):
    two zero blocks end the archive, then padding to a whole record."""
    return math.ceil((members_bytes + 2 * TAR_BLOCK) / TAR_RECORD) * TAR_RECORD


# ------------------------------------------------------------------------ planning


def plan_shards(sample_bytes: list[int], max_bytes: int, max_count: int) -> list[range]:
    """Split samples, in order, into the fewest shards such that each tar file is at
    most ``max_bytes`` and holds at most ``max_count`` samples, cutting at the
    cumulative-size quantiles so the shards are as equal in bytes as possible.

    A sample larger than ``max_bytes`` on its own gets a shard of its own.
    """
    n_samples = len(sample_bytes)
    if n_samples == 0:
        return []
    cumulative = np.cumsum(sample_bytes, dtype=np.int64)
    # a lower bound on the shard count (an oversized sample fills a shard on its own)
    capped = sum(min(size, max_bytes) for size in sample_bytes)
    n = max(1, math.ceil(capped / max_bytes), math.ceil(n_samples / max_count))
    while True:
        plan = _quantile_split(cumulative, min(n, n_samples))
        if n >= n_samples or all(_fits(r, cumulative, max_bytes, max_count) for r in plan):
            return plan
        n += 1


def _quantile_split(cumulative: np.ndarray, n: int) -> list[range]:
    total, n_samples = int(cumulative[-1]), len(cumulative)
    bounds = [0]
    for k in range(1, n):
        target = total * k / n
        # end index whose cumulative size is nearest the target ...
        end = int(np.searchsorted(cumulative, target))
        if end < n_samples and end > 0 and target - cumulative[end - 1] < cumulative[end] - target:
            end -= 1
        end += 1
        # ... but at least one sample per shard, and enough left for the shards after it
        bounds.append(min(max(end, bounds[-1] + 1), n_samples - (n - k)))
    bounds.append(n_samples)
    return [range(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _fits(shard: range, cumulative: np.ndarray, max_bytes: int, max_count: int) -> bool:
    if len(shard) == 1:
        return True
    members = int(cumulative[shard.stop - 1] - (cumulative[shard.start - 1] if shard.start else 0))
    return len(shard) <= max_count and tar_file_bytes(members) <= max_bytes


# ------------------------------------------------------------------------- writing


def write_shards(
    folder: Path, samples: list[Sample], plan: list[range], progress: Callable[[int], None]
) -> list[dict]:
    """Write each planned shard; returns ``{"name", "samples", "bytes"}`` per shard.
    Deterministic: sorted members, fixed mtime, no timestamps."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for index, shard in enumerate(plan):
        path = folder / SHARD_PATTERN.format(index)
        with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:
            for i in shard:
                sink.write(samples[i].load())
                progress(1)
        written.append({"name": path.name, "samples": len(shard), "bytes": path.stat().st_size})
    return written


def plan_and_write(
    folder: Path, samples: list[Sample], max_bytes: int, max_count: int, desc: str
) -> list[dict]:
    """``plan_shards`` then ``write_shards`` under a progress bar."""
    plan = plan_shards([s.tar_bytes() for s in samples], max_bytes, max_count)
    with tqdm(total=len(samples), desc=desc, unit="sample") as bar:
        return write_shards(folder, samples, plan, bar.update)


def write_jsonl(path: Path, lines: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
            count += 1
    return count


def duration_stats(durations_s: list[float]) -> dict:
    if not durations_s:
        return {"total_s": 0.0, "mean_s": 0.0, "min_s": 0.0, "max_s": 0.0}
    values = np.asarray(durations_s, dtype=np.float64)
    return {
        "total_s": round(float(values.sum()), 3),
        "mean_s": round(float(values.mean()), 3),
        "min_s": round(float(values.min()), 3),
        "max_s": round(float(values.max()), 3),
    }


def write_manifest(out: Path, manifest: dict, skipped_lines: list[str]) -> None:
    """``manifest.json`` plus ``skipped.txt`` (one line per skipped input)."""
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (out / "skipped.txt").write_text("".join(line + "\n" for line in skipped_lines))


# ---------------------------------------------------------------------- plumbing


def prepare_out(out: Path, overwrite: bool) -> str | None:
    """Create ``out``; an error message if it is not empty and ``overwrite`` is off."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            return f"error: {out} is not empty; pass --overwrite to replace it"
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return None


def parallel_map(fn: Callable, items: list, workers: int) -> Iterator:
    """``map(fn, items)`` in order, over ``workers`` processes when more than one
    (media checks are CPU-bound; a thread pool would serialise on the GIL)."""
    if workers <= 1 or len(items) < 2:
        yield from map(fn, items)
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(fn, items, chunksize=16)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_shard_arguments(
    parser: argparse.ArgumentParser, max_bytes: int = 1 << 30, max_samples: int = 1000
) -> None:
    """The output options every shard-writing recipe shares."""
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--max-shard-bytes",
        type=positive_int,
        default=max_bytes,
        help=f"tar size limit (default {max_bytes})",
    )
    parser.add_argument(
        "--max-shard-samples",
        type=positive_int,
        default=max_samples,
        help=f"samples per shard (default {max_samples})",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="processes checking media (default 1)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
