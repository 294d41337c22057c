"""Pack a folder of videos + WebVid-style caption CSVs into webdataset shards.

CSV columns (header required; WebVid's results_*.csv): ``videoid`` and ``name`` (the
caption) are required; ``page_dir``, ``duration`` and ``contentUrl`` are kept as
metadata when present. A ``.tsv`` file is read tab-separated. The video for a row is
the first file that exists among

    <videos>/<page_dir>/<videoid>.<ext>    (WebVid's download layout)
    <videos>/<videoid>.<ext>               (a flat folder)

with <ext> one of mp4, webm, gif, mkv, avi, mov. Each video is opened with PyAV;
missing, corrupt and frameless videos, empty captions, unsafe ids/page_dirs (``..``,
absolute paths), videos or folders that are links leading outside <videos>, repeated ids
and bad lines (a quoted field must end on its own line: an unclosed quote costs only its
own line) are skipped and counted, each with its ``file:line``.

Writes <out>/shard-NNNNN.tar (<key>.<ext> + <key>.txt caption + <key>.json metadata;
key = videoid), <out>/video_caption.jsonl ({"video": path under <videos>, "caption"},
for the jsonl sources), <out>/manifest.json and <out>/skipped.txt.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from data_recipes.inputs import (
    SkipLog,
    VideoFacts,
    check_all,
    check_video,
    input_error,
    is_file,
    media_extension,
    read_table,
    resolve_inside,
    safe_relative_path,
    table_columns,
    webdataset_key,
)
from data_recipes.shards import (
    Sample,
    add_shard_arguments,
    duration_stats,
    plan_and_write,
    prepare_out,
    write_jsonl,
    write_manifest,
)
from divot_llm.data.sources import VIDEO_EXTS

REQUIRED_COLUMNS = ("videoid", "name")
METADATA_COLUMNS = ("videoid", "page_dir", "duration", "contentUrl")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=Path, required=True, help="folder holding the videos")
    parser.add_argument("--csv", type=Path, nargs="+", required=True, help="caption CSV/TSV file(s)")
    add_shard_arguments(parser)


@dataclass(frozen=True)
class Candidate:
    """A row whose fields are valid and whose video file exists (not yet opened)."""

    where: str
    key: str
    video: PurePosixPath  # relative to --videos
    caption: str
    metadata: dict


def find_video(videos: Path, videoid: str, page_dir: str) -> PurePosixPath | None:
    """The video's path relative to ``videos`` in one of the accepted layouts, or None."""
    folders = [safe_relative_path(page_dir)] if page_dir.strip() else []
    for folder in [*folders, PurePosixPath()]:
        for ext in VIDEO_EXTS:
            relative = folder / f"{videoid}.{ext}"
            if is_file(videos / relative):
                return relative
    return None


def row_candidate(where: str, row: dict[str, str], videos: Path, skips: SkipLog) -> Candidate | None:
    videoid, page_dir = row["videoid"].strip(), (row.get("page_dir") or "").strip()
    caption = row["name"].strip()
    single_component = safe_relative_path(videoid)
    if single_component is None or len(single_component.parts) != 1 or webdataset_key(videoid) is None:
        skips.skip("unsafe_path", where, f"videoid {videoid!r}")
        return None
    if page_dir and safe_relative_path(page_dir) is None:
        skips.skip("unsafe_path", where, f"page_dir {page_dir!r}")
        return None
    if not caption:
        skips.skip("empty_caption", where, f"videoid {videoid}")
        return None
    video = find_video(videos, videoid, page_dir)
    if video is None:
        skips.skip("missing_video", where, f"no {videoid}.<{'|'.join(VIDEO_EXTS)}> under {videos}")
        return None
    if resolve_inside(videos, video) is None:
        skips.skip("unsafe_path", where, f"{video} leads outside {videos} through a link")
        return None
    metadata = {k: row[k].strip() for k in METADATA_COLUMNS if row.get(k)}
    return Candidate(where, webdataset_key(videoid), video, caption, metadata)


def scan_rows(csv_paths: list[Path], videos: Path, skips: SkipLog) -> list[Candidate]:
    candidates, seen = [], set()
    for path in csv_paths:
        for where, row in tqdm(read_table(path, skips), desc=f"read {path.name}", unit="row"):
            candidate = row_candidate(where, row, videos, skips)
            if candidate is None:
                continue
            if candidate.key in seen:
                skips.skip("duplicate_key", where, f"videoid {row['videoid'].strip()} already taken")
                continue
            seen.add(candidate.key)
            candidates.append(candidate)
    return candidates


def check_videos(
    candidates: list[Candidate], videos: Path, workers: int, skips: SkipLog
) -> list[tuple[Candidate, VideoFacts]]:
    """Open every candidate's video with PyAV (in ``workers`` processes)."""
    return check_all(
        candidates, lambda c: (c.where, c.video), videos, check_video, workers, skips, unit="video"
    )


def to_sample(candidate: Candidate, facts: VideoFacts, videos: Path) -> Sample:
    metadata = {
        **candidate.metadata,
        "duration_s": round(facts.duration_s, 3),
        "num_frames": facts.num_frames,
        "fps": round(facts.fps, 3),
        "width": facts.width,
        "height": facts.height,
    }
    return Sample(
        candidate.key,
        {
            media_extension(candidate.video): videos / candidate.video,
            "txt": candidate.caption.encode("utf-8"),
            "json": json.dumps(metadata, ensure_ascii=False, sort_keys=True).encode("utf-8"),
        },
    )


def run(args: argparse.Namespace) -> int:
    error = input_error(args.csv, [args.videos])
    if error:
        print(error)
        return 2
    for path in args.csv:
        missing = [c for c in REQUIRED_COLUMNS if c not in table_columns(path)]
        if missing:
            print(f"error: {path} has no column {', '.join(missing)} (header: {table_columns(path)})")
            return 2
    error = prepare_out(args.out, args.overwrite)
    if error:
        print(error)
        return 2
    skips = SkipLog()
    accepted = check_videos(scan_rows(args.csv, args.videos, skips), args.videos, args.workers, skips)
    samples = [to_sample(c, f, args.videos) for c, f in accepted]
    shards = plan_and_write(args.out, samples, args.max_shard_bytes, args.max_shard_samples, "write")
    write_jsonl(
        args.out / "video_caption.jsonl", ({"video": str(c.video), "caption": c.caption} for c, _ in accepted)
    )
    manifest = {
        "recipe": "webvid",
        "inputs": {"csv": [str(p) for p in args.csv], "videos": str(args.videos)},
        "samples": len(samples),
        "videos": len(samples),
        "video_durations": duration_stats([f.duration_s for _, f in accepted]),
        "shards": shards,
        "skipped": dict(sorted(skips.counts.items())),
        "skipped_total": skips.total,
    }
    write_manifest(args.out, manifest, skips.lines)
    print(f"wrote {len(samples)} videos in {len(shards)} shards to {args.out}; {skips.summary()}")
    return 0 if samples else 1
