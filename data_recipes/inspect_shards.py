"""Check webdataset shards as training reads them: count samples, decode every video/image,
report every problem.

Shards are read with the training reader (``divot_llm.data.sources.TarSource``), so what
is reported is what a run would skip: corrupt, empty and truncated shards, and every
sample the reader refuses (no media member, unreadable member, bad json, no text, ...);
then every media member is decoded. Shards are named by their path under the folder all
of them share, samples as <shard>:<key>. Any problem makes the exit code 1 (2: no shard
matches). With --verify-synthetic, also checks that each synthetic sample's pixels show
what its caption says (colours, shape, direction). --show N prints the first N samples
(media size, caption or first QA turn, video size/fps/duration); --contact-sheet OUT.png
draws, for the first --sheet-rows samples, the 5 frames of one clip picked by the
training sampler (an image: its static clip). --motion extracts the Video-LaVIT motion
clips (``data.motion`` defaults) of the first --motion-samples videos and prints, per
video, its clips and their mean vector length, or why it has none (too short: no
``no_motion_clip``, which motion training skips, is not counted as a problem); with
--png-dir DIR it also draws each video's first clip (frames above flow colours, as
``divot-data motion``) to DIR/<shard>_<key>.png.
"""

from __future__ import annotations

import argparse
import functools
import glob
import io
import os
import re
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_recipes.contact_sheet import compose_sheet, sample_row
from data_recipes.motion import describe, draw_clip
from divot_llm.cli.display import printable
from divot_llm.config.schema import MotionFieldConfig
from divot_llm.data.clip_sampling import probe_video
from divot_llm.data.errors import MediaError
from divot_llm.data.images import open_rgb
from divot_llm.data.motion_vectors import motion_clips_from_stream, reencode_for_motion
from divot_llm.data.sources import DataError, RawSample, SkipCounter, TarSource
from divot_llm.data.synthetic import (
    COLORS,
    DIRECTIONS,
    SHAPES,
    Scene,
    analyse_frame,
    read_scene_from_frames,
    shape_from_fill,
)
from divot_llm.data.video_codec import decode_video

# Skip reasons of the training reader that concern a whole shard rather than one sample.
SHARD_REASONS = ("corrupt_shard", "unreadable_shard", "truncated_shard", "empty_shard")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="tar files or globs (quote globs)")
    parser.add_argument("--no-decode", action="store_true", help="only read the shards, do not decode media")
    parser.add_argument(
        "--verify-synthetic", action="store_true", help="check pixels against the synthetic captions"
    )
    parser.add_argument("--max-errors", type=int, default=20, help="how many problems of each kind to print")
    parser.add_argument("--show", type=int, default=0, metavar="N", help="print the first N samples")
    parser.add_argument(
        "--contact-sheet", type=Path, metavar="OUT.png", help="write sampled frames as a grid"
    )
    parser.add_argument("--sheet-rows", type=int, default=8, help="samples on the contact sheet (default 8)")
    parser.add_argument("--sheet-size", type=int, default=128, help="frame size on the contact sheet, px")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the reader's sample order and of the sheet's clips"
    )
    parser.add_argument("--motion", action="store_true", help="extract and report motion-vector clips")
    parser.add_argument(
        "--motion-samples", type=int, default=8, metavar="N", help="videos to extract motion from (default 8)"
    )
    parser.add_argument("--png-dir", type=Path, help="with --motion: draw each video's first clip here")


# ------------------------------------------------------------------------ shards


def expand_shards(patterns: list[str]) -> list[Path]:
    """Every file the patterns match, each once, in order; FileNotFoundError naming a
    pattern that matches nothing."""
    paths: dict[str, Path] = {}
    for pattern in patterns:
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"no shard matches {pattern!r}")
        for match in matched:
            paths.setdefault(os.path.abspath(match), Path(match))
    return list(paths.values())


def shown_names(shards: list[Path]) -> tuple[str, dict[Path, str]]:
    """The folder all shards share and each shard's path under it: three folders may
    each hold a ``shard-00000.tar``, so a bare file name is ambiguous."""
    folders = [os.path.dirname(os.path.abspath(s)) for s in shards]
    root = os.path.commonpath(folders)
    return root, {s: os.path.relpath(os.path.abspath(s), root) for s in shards}


def not_a_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as a shard without risk (a fifo would block the
    reader forever), or None."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot stat: {exc.strerror or exc}"
    return None if stat.S_ISREG(mode) else "not a regular file"


class ListedSkips(SkipCounter):
    """The training reader's skip counter, keeping every skip instead of logging the
    first few: inspection lists them all."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[tuple[str, str, str]] = []  # (reason, where, detail)

    def skip(self, reason: str, where: str, detail: str = "") -> None:
        self[reason] += 1
        self.entries.append((reason, where, detail))


@dataclass
class ShardRead:
    """What reading one shard with the training reader found."""

    skips: ListedSkips = field(default_factory=ListedSkips)
    samples: int = 0


def read_shard(shard: Path, seed: int, found: ShardRead) -> Iterator[RawSample]:
    """The samples training would read from ``shard`` (in the reader's seeded order);
    what it skips is left in ``found.skips``."""
    source = TarSource("inspect", [shard], seed=seed, infinite=False)
    source.skipped = found.skips
    try:
        for sample in source:
            found.samples += 1
            yield sample
    except DataError:
        pass  # no usable sample: the skips (or their absence) say why


def qualified(where: str, shard: Path, shown: str) -> str:
    """The reader's ``<shard path or name>:<key>`` with the shard's shown path instead."""
    for prefix in (*_spellings(str(shard)), *_spellings(shard.name)):
        if where.startswith(prefix):
            return shown + where[len(prefix) :]
    return where


def _spellings(text: str) -> tuple[str, str]:
    # as is, and as the reader logs it: bytes that were not UTF-8 escaped
    return text, text.encode("utf-8", "backslashreplace").decode("utf-8")


# ----------------------------------------------------------------------- samples


@functools.cache
def synthetic_captions() -> dict[str, dict]:
    """Every caption the synthetic generator writes -> what it names, built from the
    generator's own templates (``Scene.captions``) so the two cannot drift apart."""
    table: dict[str, dict] = {}
    for shape in SHAPES:
        for color in COLORS:
            for background in COLORS:
                if background == color:
                    continue
                for direction in (*DIRECTIONS, None):
                    scene = Scene(shape, color, background, direction, radius_frac=0.25)
                    named = {"color": color, "background": background, "shape": shape}
                    if direction is not None:
                        named["direction"] = direction
                    table.update(dict.fromkeys(scene.captions(), named))
    return table


def check_sample(raw: RawSample, verify: bool) -> str | None:
    """Decode the sample's media (and with ``verify`` compare its pixels with its
    synthetic caption); a problem, or None."""
    try:
        if raw.media_kind == "video":
            frames = decode_video(raw.media).frames
        else:
            frames = np.asarray(open_rgb(raw.media))[None]  # as training reads it, any PIL mode
    except Exception as exc:  # decoders fail in many ways on a corrupt member; never stop
        return f"undecodable {raw.media_kind}: {type(exc).__name__}: {exc}"
    if len(frames) == 0:
        return f"{raw.media_kind} has no frames"
    return synthetic_mismatch(raw, frames) if verify else None


def synthetic_mismatch(raw: RawSample, frames_thw3: np.ndarray) -> str | None:
    """Where the pixels disagree with what the synthetic caption names, or None."""
    named = next((synthetic_captions()[c] for c in raw.captions if c in synthetic_captions()), None)
    if named is None:
        return "no synthetic caption to verify against"
    if raw.media_kind == "video":
        seen = read_scene_from_frames(frames_thw3)
    else:
        frame = analyse_frame(frames_thw3[0])
        fill = frame["fill"]
        seen = {**frame, "shape": shape_from_fill(fill) if fill is not None else None}
    wrong = [k for k in named if seen.get(k) != named[k]]
    if not wrong:
        return None
    return "pixels disagree with the caption on " + ", ".join(
        f"{k} (pixels: {seen.get(k)}, caption: {named[k]})" for k in wrong
    )


def describe_sample(raw: RawSample, name: str) -> str:
    """Three lines: name, media (bytes and facts), caption or first QA turn."""
    return "\n".join([printable(name, limit=300), "  " + _media_line(raw), "  " + _text_line(raw)])


def _media_line(raw: RawSample) -> str:
    line = f"{raw.media_kind} {len(raw.media):,} B"
    try:
        if raw.media_kind == "video":
            info = probe_video(raw.media)
            return line + (
                f": {info.width}x{info.height}, {info.fps:.2f} fps, {info.num_frames} frames, "
                f"{info.num_frames / info.fps:.2f} s"
            )
        with Image.open(io.BytesIO(raw.media)) as image:
            return line + ": {}x{}".format(*image.size)
    except Exception as exc:  # describing must not stop on the corrupt member it reports
        return line + f": unreadable ({type(exc).__name__}: {printable(exc)})"


def _text_line(raw: RawSample) -> str:
    if raw.captions:
        more = f" (+{len(raw.captions) - 1} more)" if len(raw.captions) > 1 else ""
        return f"caption: {printable(raw.captions[0])}{more}"
    if raw.turns:
        question, answer = raw.turns[0]
        return f"qa: {len(raw.turns)} turns; Q: {printable(question)} A: {printable(answer)}"
    return "no text"


def motion_report(raw: RawSample, name: str, shard: Path, png_dir: Path | None) -> list[str]:
    """A video's motion clips (``data.motion`` defaults), one line each, or why it has none;
    with ``png_dir`` the first clip drawn there."""
    motion = MotionFieldConfig()
    try:
        stream = reencode_for_motion(raw.media, motion)
        clips = motion_clips_from_stream(stream, motion)
    except MediaError as exc:
        return [f"{printable(name, 300)}: no motion clip ({exc.reason}): {printable(exc.detail, 300)}"]
    lines = [f"{printable(name, 300)}: {len(clips.start_frames)} clips, {clips.num_frames} frames"]
    lines += describe(clips)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        out = png_dir / re.sub(r"[^\w.-]", "_", f"{shard.stem}_{raw.key.rsplit(':', 1)[-1]}.png")
        draw_clip(stream, clips, 0, max_frames=12).save(out)
        lines.append(f"  clip 0 -> {out}")
    return lines


def _sheet_row(raw: RawSample, index: int, args: argparse.Namespace) -> np.ndarray | None:
    rng = np.random.default_rng([args.seed, index])
    try:
        return sample_row(raw.media, raw.media_kind == "video", rng, args.sheet_size)
    except Exception:  # unreadable media are already reported by the inspection itself
        return None


# --------------------------------------------------------------------------- run


@dataclass
class Findings:
    kinds: Counter = field(default_factory=Counter)  # usable samples per media kind
    shard_problems: list[str] = field(default_factory=list)
    sample_problems: list[str] = field(default_factory=list)
    sheet_rows: list[tuple[str, np.ndarray]] = field(default_factory=list)
    motion_lines: list[str] = field(default_factory=list)
    motion_videos: int = 0  # videos whose motion was extracted


def inspect_shard(shard: Path, shown: str, args: argparse.Namespace, findings: Findings, bar: tqdm) -> None:
    problem = not_a_regular_file(shard)
    if problem:
        findings.shard_problems.append(f"{printable(shown)}: {problem}")
        return
    found = ShardRead()
    for raw in read_shard(shard, args.seed, found):
        bar.update(1)
        name = qualified(raw.key, shard, shown)
        index = sum(findings.kinds.values())
        findings.kinds[raw.media_kind] += 1
        if index < args.show:
            tqdm.write(describe_sample(raw, name))
        if args.contact_sheet and len(findings.sheet_rows) < args.sheet_rows:
            row = _sheet_row(raw, index, args)
            if row is not None:
                findings.sheet_rows.append((printable(name.rsplit(":", 1)[-1], 24), row))
        if args.motion and raw.media_kind == "video" and findings.motion_videos < args.motion_samples:
            findings.motion_videos += 1
            findings.motion_lines += motion_report(raw, name, shard, args.png_dir)
        problem = None if args.no_decode else check_sample(raw, args.verify_synthetic)
        if problem:
            findings.sample_problems.append(f"{printable(name, 300)}: {printable(problem, 300)}")
    for reason, where, detail in found.skips.entries:
        line = f"{printable(qualified(where, shard, shown), 300)} ({reason})" + (
            f": {printable(detail, 300)}" if detail else ""
        )
        (findings.shard_problems if reason in SHARD_REASONS else findings.sample_problems).append(line)
    if found.samples == 0 and not any(r in SHARD_REASONS for r in found.skips):
        reason = "no_usable_sample" if found.skips else "empty_shard"
        findings.shard_problems.append(f"{printable(shown, 300)} ({reason})")


def _print_list(title: str, lines: list[str], limit: int) -> None:
    print(f"{len(lines)} {title}")
    for line in lines[: max(0, limit)]:
        print("  " + line)
    if len(lines) > limit:
        print(f"  ... {len(lines) - limit} more (--max-errors)")


def run(args: argparse.Namespace) -> int:
    try:
        shards = expand_shards(args.shards)
    except FileNotFoundError as exc:
        print(f"error: {printable(exc)}")
        return 2
    root, names = shown_names(shards)
    findings = Findings()
    with tqdm(desc="inspect", unit="sample") as bar:
        for shard in shards:
            inspect_shard(shard, names[shard], args, findings, bar)
    total = sum(findings.kinds.values())
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(findings.kinds.items()))
    print(
        f"{len(shards)} shards under {printable(root, 300)}, {total} samples"
        + (f": {kinds}" if kinds else "")
    )
    _print_list("problem shards", findings.shard_problems, args.max_errors)
    _print_list("problem samples", findings.sample_problems, args.max_errors)
    if args.motion:
        print(f"motion: {findings.motion_videos} videos (data.motion defaults)")
        for line in findings.motion_lines:
            print("  " + line)
    if args.contact_sheet:
        if findings.sheet_rows:
            args.contact_sheet.parent.mkdir(parents=True, exist_ok=True)
            compose_sheet(findings.sheet_rows).save(args.contact_sheet)
            print(f"contact sheet: {len(findings.sheet_rows)} rows -> {args.contact_sheet}")
        else:
            print("contact sheet: no readable video or image to draw")
    return 1 if findings.shard_problems or findings.sample_problems or total == 0 else 0
