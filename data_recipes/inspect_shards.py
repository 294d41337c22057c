"""Check webdataset shards: count samples, decode every video/image, report failures.

Corrupt or undecodable members are counted and listed, never fatal. With
--verify-synthetic, also checks that each synthetic video's pixels show what its
metadata says (colours, shape, direction).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
from collections import Counter
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from divot_llm.data.synthetic import read_scene_from_frames
from divot_llm.data.video_io import decode_video

VIDEO_EXTS = ("mp4", "webm", "gif", "mkv", "avi", "mov")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="tar files or globs (quote globs)")
    parser.add_argument("--no-decode", action="store_true", help="only count members, do not decode media")
    parser.add_argument(
        "--verify-synthetic", action="store_true", help="check pixels against synthetic metadata"
    )
    parser.add_argument("--max-errors", type=int, default=20, help="how many failures to print")


def _expand(patterns: list[str]) -> list[str]:
    urls: list[str] = []
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"no shard matches {pattern!r}")
        urls.extend(matched)
    return urls


def _check_sample(sample: dict, verify: bool) -> tuple[str, str | None]:
    """Return (media kind, error or None) for one grouped tar sample."""
    video_ext = next((e for e in VIDEO_EXTS if e in sample), None)
    image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    if video_ext is None and image_ext is None:
        return "none", "no video or image member"
    if "txt" not in sample and "json" not in sample:
        return "none", "no caption (.txt/.json) member"
    if image_ext is not None and video_ext is None:
        Image.open(io.BytesIO(sample[image_ext])).convert("RGB")
        return "image", None
    video = decode_video(sample[video_ext])
    if verify and "json" in sample:
        scene = json.loads(sample["json"])["scene"]
        seen = read_scene_from_frames(video.frames)
        wrong = [k for k in ("color", "background", "direction", "shape") if seen[k] != scene[k]]
        if wrong:
            return "video", "pixels disagree with metadata on " + ", ".join(
                f"{k} ({seen[k]} != {scene[k]})" for k in wrong
            )
    return "video", None


def run(args: argparse.Namespace) -> int:
    urls = _expand(args.shards)
    kinds: Counter[str] = Counter()
    errors: list[str] = []
    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False, handler=wds.warn_and_continue)
    for sample in tqdm(pipeline, desc="inspect", unit="sample"):
        key = f"{Path(sample.get('__url__', '?')).name}:{sample['__key__']}"
        if args.no_decode:
            kinds["video" if any(e in sample for e in VIDEO_EXTS) else "image"] += 1
            continue
        try:
            kind, problem = _check_sample(sample, args.verify_synthetic)
        except Exception as exc:  # a corrupt member must not stop the inspection
            kind, problem = "corrupt", f"{type(exc).__name__}: {exc}"
        kinds[kind] += 1
        if problem:
            errors.append(f"{key}: {problem}")
    total = sum(kinds.values())
    print(f"{len(urls)} shards, {total} samples: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())))
    print(f"{len(errors)} problem samples")
    for line in errors[: args.max_errors]:
        print("  " + line)
    return 1 if errors or total == 0 else 0
