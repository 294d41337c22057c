"""Convert Video-LLaVA-style QA json into our QA jsonl (and optionally shards).

Input: JSON list files (Video-LLaVA's ``videochatgpt_tune_.json``,
``llava_image_tune_.json``, ...) or JSON-lines files of records

    {"id": ..., "video" | "image": "<path under --media-root>",
     "conversations": [{"from": "human", "value": "<video>\\nQ1"}, {"from": "gpt", "value": "A1"},
                       {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}, ...]}

Turns must alternate human/gpt (``user``/``assistant`` accepted), starting with a
question and ending with an answer. The ``<video>``/``<image>`` placeholders are removed
from the questions (the sequence templates place the media themselves). Every
referenced file is opened (PyAV for videos, PIL for images); text-only records, missing
or corrupt media, unsafe paths (``..``, absolute, or links leading outside --media-root),
malformed conversations and empty turns are skipped and counted, each with its
``file:line``.

Writes <out>/video_qa.jsonl and <out>/image_qa.jsonl, lines
``{"video"|"image": path, "questions": [...], "answers": [...], "id": ...}`` with paths
as given (relative to --media-root), <out>/manifest.json and <out>/skipped.txt; with
--shards also <out>/videos/shard-NNNNN.tar and <out>/images/shard-NNNNN.tar holding
<key>.<ext> + <key>.json ({"id", "questions", "answers"}), key = the record id.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from data_recipes.inputs import (
    SkipLog,
    VideoFacts,
    check_all,
    check_image,
    check_video,
    input_error,
    is_text,
    media_extension,
    read_json_records,
    resolve_inside,
    safe_relative_path,
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
from divot_llm.data.sources import IMAGE_EXTS, VIDEO_EXTS

QUESTION_ROLES = ("human", "user")
ANSWER_ROLES = ("gpt", "assistant")
_PLACEHOLDER = re.compile(r"\s*<(?:video|image)>\s*")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, nargs="+", required=True, help="QA json / jsonl file(s)")
    parser.add_argument(
        "--media-root", type=Path, required=True, help="folder the video/image paths are under"
    )
    parser.add_argument("--shards", action="store_true", help="also pack the media into webdataset shards")
    add_shard_arguments(parser)


@dataclass(frozen=True)
class QARecord:
    where: str
    kind: str  # "video" | "image"
    media: PurePosixPath  # relative to --media-root
    record_id: str
    questions: list[str]
    answers: list[str]

    def jsonl_line(self) -> dict:
        return {
            self.kind: str(self.media),
            "questions": self.questions,
            "answers": self.answers,
            "id": self.record_id,
        }


def strip_placeholders(question: str) -> str:
    return _PLACEHOLDER.sub(" ", question).strip()


def parse_conversation(turns: object) -> tuple[list[str], list[str]] | str:
    """(questions, answers) from alternating human/gpt turns, or a skip reason."""
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        return "bad_conversation"
    questions, answers = [], []
    for i, turn in enumerate(turns):
        roles = QUESTION_ROLES if i % 2 == 0 else ANSWER_ROLES
        if (
            not isinstance(turn, dict)
            or turn.get("from") not in roles
            or not isinstance(turn.get("value"), str)
        ):
            return "bad_conversation"
        text = strip_placeholders(turn["value"]) if i % 2 == 0 else turn["value"].strip()
        if not text:
            return "empty_text"
        if not is_text(text):
            return "bad_encoding"
        (questions if i % 2 == 0 else answers).append(text)
    return questions, answers


def parse_record(where: str, record: object) -> QARecord | str:
    """A QA record from one json element, or a skip reason."""
    if not isinstance(record, dict):
        return "bad_record"
    kind = "video" if "video" in record else "image" if "image" in record else None
    if kind is None:
        return "no_media"  # text-only conversations: nothing for a video model to see
    if not isinstance(record[kind], str):
        return "bad_record"
    if not is_text(record[kind]) or not is_text(str(record.get("id", ""))):
        return "bad_encoding"
    media = safe_relative_path(record[kind])
    if media is None:
        return "unsafe_path"
    if media_extension(media) not in (VIDEO_EXTS if kind == "video" else IMAGE_EXTS):
        return "unsupported_format"
    parsed = parse_conversation(record.get("conversations"))
    if isinstance(parsed, str):
        return parsed
    record_id = str(record["id"]) if record.get("id") is not None else media.stem
    return QARecord(where, kind, media, record_id, *parsed)


def read_records(paths: list[Path], skips: SkipLog) -> list[QARecord]:
    records = []
    for path in paths:
        for where, raw in tqdm(read_json_records(path, skips), desc=f"read {path.name}", unit="record"):
            parsed = parse_record(where, raw)
            if isinstance(parsed, str):
                skips.skip(parsed, where)
            else:
                records.append(parsed)
    return records


def check_media(path: Path) -> VideoFacts | tuple[int, int] | str:
    """PyAV facts for a video, (width, height) for an image, or a skip reason."""
    return check_video(path) if media_extension(path) in VIDEO_EXTS else check_image(path)


def records_inside(records: list[QARecord], media_root: Path, skips: SkipLog) -> list[QARecord]:
    """The records whose media stays under ``media_root`` once links are followed."""
    inside = []
    for record in records:
        if resolve_inside(media_root, record.media) is None:
            skips.skip(
                "unsafe_path", record.where, f"{record.media} leads outside {media_root} through a link"
            )
        else:
            inside.append(record)
    return inside


def check_records(
    records: list[QARecord], media_root: Path, workers: int, skips: SkipLog
) -> list[tuple[QARecord, object]]:
    records = records_inside(records, media_root, skips)
    return check_all(records, lambda r: (r.where, r.media), media_root, check_media, workers, skips)


def unique_keys(records: list[QARecord], skips: SkipLog) -> list[tuple[QARecord, str]]:
    """Shard keys from record ids; one id used by several records (several QA sets on
    one video) gets ``-1``, ``-2``, ... suffixes."""
    keyed, used = [], set()
    for record in records:
        base = webdataset_key(record.record_id)
        if base is None:
            skips.skip("unsafe_key", record.where, f"id {record.record_id!r}")
            continue
        key, n = base, 0
        while key in used:
            n += 1
            key = f"{base}-{n}"
        used.add(key)
        keyed.append((record, key))
    return keyed


def to_sample(record: QARecord, key: str, media_root: Path) -> Sample:
    qa = {"id": record.record_id, "questions": record.questions, "answers": record.answers}
    return Sample(
        key,
        {
            media_extension(record.media): media_root / record.media,
            "json": json.dumps(qa, ensure_ascii=False, sort_keys=True).encode("utf-8"),
        },
    )


def write_qa_shards(args: argparse.Namespace, keyed: list[tuple[QARecord, str]]) -> dict[str, list[dict]]:
    shards = {}
    for kind, folder in (("video", "videos"), ("image", "images")):
        samples = [to_sample(r, key, args.media_root) for r, key in keyed if r.kind == kind]
        if samples:
            shards[folder] = plan_and_write(
                args.out / folder, samples, args.max_shard_bytes, args.max_shard_samples, f"write {folder}"
            )
    return shards


def run(args: argparse.Namespace) -> int:
    error = input_error(args.json, [args.media_root]) or prepare_out(args.out, args.overwrite)
    if error:
        print(error)
        return 2
    skips = SkipLog()
    records = read_records(args.json, skips)
    accepted = check_records(records, args.media_root, args.workers, skips)
    keyed = unique_keys([r for r, _ in accepted], skips)
    counts = {
        kind: write_jsonl(args.out / f"{kind}_qa.jsonl", (r.jsonl_line() for r, _ in keyed if r.kind == kind))
        for kind in ("video", "image")
    }
    kept = {id(r) for r, _ in keyed}
    # several QA records often share one video: durations are per distinct file
    durations = {r.media: f.duration_s for r, f in accepted if id(r) in kept and isinstance(f, VideoFacts)}
    manifest = {
        "recipe": "videollava",
        "inputs": {"json": [str(p) for p in args.json], "media_root": str(args.media_root)},
        "samples": len(keyed),
        "videos": counts["video"],
        "images": counts["image"],
        "qa_pairs": sum(len(r.questions) for r, _ in keyed),
        "distinct_videos": len(durations),
        "video_durations": duration_stats(list(durations.values())),
        "shards": write_qa_shards(args, keyed) if args.shards else {},
        "skipped": dict(sorted(skips.counts.items())),
        "skipped_total": skips.total,
    }
    write_manifest(args.out, manifest, skips.lines)
    print(
        f"wrote {counts['video']} video and {counts['image']} image QA records to {args.out}; {skips.summary()}"
    )
    return 0 if keyed else 1
