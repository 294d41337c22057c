"""Check webdataset shards: count samples, decode every video/image, report failures.

Corrupt or undecodable members are counted and listed, never fatal. With
--verify-synthetic, also checks that each synthetic video's pixels show what its
metadata says (colours, shape, direction). --show N prints the first N samples (members
and sizes, caption or first QA turn, video size/fps/duration); --contact-sheet OUT.png
draws, for the first --sheet-rows samples, the 5 frames of one clip picked by the
training sampler (an image: its static clip).
"""

from __future__ import annotations

import argparse
import glob
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from data_recipes.contact_sheet import compose_sheet, sample_row
from data_recipes.inputs import IMAGE_EXTS, VIDEO_EXTS
from divot_llm.data.synthetic import read_scene_from_frames
from divot_llm.data.video import probe_video
from divot_llm.data.video_io import decode_video


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="tar files or globs (quote globs)")
    parser.add_argument("--no-decode", action="store_true", help="only count members, do not decode media")
    parser.add_argument(
        "--verify-synthetic", action="store_true", help="check pixels against synthetic metadata"
    )
    parser.add_argument("--max-errors", type=int, default=20, help="how many failures to print")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="print the first N samples")
    parser.add_argument(
        "--contact-sheet", type=Path, metavar="OUT.png", help="write sampled frames as a grid"
    )
    parser.add_argument("--sheet-rows", type=int, default=8, help="samples on the contact sheet (default 8)")
    parser.add_argument("--sheet-size", type=int, default=128, help="frame size on the contact sheet, px")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clip sampler for the sheet")


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


def describe_sample(sample: dict) -> str:
    """Several lines: key, members with sizes, caption (or first QA turn), media facts."""
    members = {k: v for k, v in sample.items() if not k.startswith("_")}
    lines = [
        f"{Path(sample.get('__url__', '?')).name}:{sample['__key__']}",
        "  members: " + ", ".join(f"{k} {len(v):,} B" for k, v in sorted(members.items())),
        "  " + _text_line(sample),
    ]
    video_ext = next((e for e in VIDEO_EXTS if e in sample), None)
    image_ext = next((e for e in IMAGE_EXTS if e in sample), None)
    try:
        if video_ext:
            info = probe_video(sample[video_ext])
            lines.append(
                f"  video: {info.width}x{info.height}, {info.fps:.2f} fps, {info.num_frames} frames, "
                f"{info.num_frames / info.fps:.2f} s"
            )
        elif image_ext:
            lines.append("  image: {}x{}".format(*Image.open(io.BytesIO(sample[image_ext])).size))
    except Exception as exc:  # describing must not stop on the corrupt member it reports
        lines.append(f"  media unreadable: {type(exc).__name__}: {exc}")
    return "\n".join(lines)


def _text_line(sample: dict) -> str:
    if "txt" in sample:
        return "caption: " + sample["txt"].decode("utf-8", errors="replace")
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except ValueError:
        return "json: not valid json"
    if isinstance(meta, dict) and meta.get("questions") and meta.get("answers"):
        return f"qa: {len(meta['questions'])} turns; Q: {meta['questions'][0]} A: {meta['answers'][0]}"
    if isinstance(meta, dict) and "caption" in meta:
        return f"caption: {meta['caption']}"
    return "no caption"


def _sheet_row(sample: dict, index: int, args: argparse.Namespace) -> np.ndarray | None:
    video_ext = next((e for e in VIDEO_EXTS if e in sample), None)
    media_ext = video_ext or next((e for e in IMAGE_EXTS if e in sample), None)
    if media_ext is None:
        return None
    rng = np.random.default_rng([args.seed, index])
    try:
        return sample_row(sample[media_ext], video_ext is not None, rng, args.sheet_size)
    except Exception:  # unreadable media are already reported by the inspection itself
        return None


def run(args: argparse.Namespace) -> int:
    urls = _expand(args.shards)
    kinds: Counter[str] = Counter()
    errors: list[str] = []
    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=False, handler=wds.warn_and_continue)
    sheet_rows: list[tuple[str, np.ndarray]] = []
    for index, sample in enumerate(tqdm(pipeline, desc="inspect", unit="sample")):
        key = f"{Path(sample.get('__url__', '?')).name}:{sample['__key__']}"
        if index < args.show:
            tqdm.write(describe_sample(sample))
        if args.contact_sheet and len(sheet_rows) < args.sheet_rows:
            row = _sheet_row(sample, index, args)
            if row is not None:
                sheet_rows.append((sample["__key__"], row))
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
    if args.contact_sheet:
        if sheet_rows:
            args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
            compose_sheet(sheet_rows).save(args.contact_sheet)
            print(f"contact sheet: {len(sheet_rows)} rows -> {args.contact_sheet}")
        else:
            print("contact sheet: no readable video or image to draw")
    return 1 if errors or total == 0 else 0
