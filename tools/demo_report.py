"""Summarise a ``launch/demo.sh`` run: losses per stage, releases, comprehension accuracy,
and how well the generated videos show what their captions ask for.

    python tools/demo_report.py outputs/demo

Reads each stage's ``metrics.jsonl`` (first and last training loss, validation before and
after), the releases' ``release.json``, and ``comprehension/answers.jsonl`` against the
held-out questions of the synthetic set (``annotations/val_video_qa.jsonl``): the share of
held-out videos whose shape colour the SFT-comp model names, next to chance (one of the
palette's colours at random). The de-tokenizer stage's validation gives the PSNR of held-out
clips reconstructed through tokenizer -> de-tokenizer, next to two flat guesses: the clips'
mean colour, and each clip's own mean colour.
The videos generated for the held-out captions (``generation/generated.jsonl``) are read
back with the synthetic set's own pixel analyser: how often the shape and the background
have the caption's colours, next to chance. ``--json`` writes the numbers for scripts and
tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from divot_llm.data.synthetic import COLORS, caption_colors, named_color, read_scene_from_frames
from divot_llm.data.video_codec import decode_video

STAGES = ("pretrain", "sft_comp", "sft_gen", "detok")
OVERVIEW_ROWS = 6  # generated videos drawn in generation/overview.png
VAL_KEYS = {  # metrics.jsonl key -> report key (first and last validation)
    "val/lm_loss": "val_lm_loss",
    "val/loss": "val_loss",
    "val/psnr": "val_psnr",
    "val/psnr_mean_colour": "val_psnr_mean_colour",
    "val/psnr_clip_colour": "val_psnr_clip_colour",
}


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stage_summary(run: Path) -> dict:
    records = _records(run)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    out = {"steps": train[-1]["step"] if train else 0}
    if train:
        out["train_loss"] = [train[0]["train/loss"], train[-1]["train/loss"]]
    for key, name in VAL_KEYS.items():
        if val and key in val[-1]:
            out[name] = [val[0].get(key), val[-1][key]]
    return out


def comprehension_accuracy(answers_file: Path, qa_file: Path, media_root: Path) -> dict:
    """Exact shape-colour matches of the answers against the held-out QA lines."""
    expected = {
        str((media_root / line["video"]).resolve()): named_color(line["answer"])
        for line in map(json.loads, qa_file.read_text().splitlines())
    }
    answers = [json.loads(line) for line in answers_file.read_text().splitlines()]
    hits = sum(named_color(a["answer"]) == expected[str(Path(a["media"]).resolve())] for a in answers)
    return {
        "videos": len(answers),
        "correct": hits,
        "accuracy": hits / max(1, len(answers)),
        "chance": 1 / len(COLORS),
    }


def generation_colours(generated_file: Path, overview: Path | None = None) -> dict:
    """Colour matches of the generated videos against their captions: the shape colour,
    the background colour, and both (read from the decoded mp4, as a viewer sees it).
    ``overview``: also draw the first videos with their captions and what was read."""
    hits = {"color": 0, "background": 0, "both": 0}
    records = [json.loads(line) for line in generated_file.read_text().splitlines()]
    videos = [r for r in records if "video" in r]
    rows = []
    for record in videos:
        frames_thw3 = decode_video(record["video"]).frames
        seen = read_scene_from_frames(frames_thw3)
        wanted_color, wanted_background = caption_colors(record["caption"])
        color, background = seen["color"] == wanted_color, seen["background"] == wanted_background
        hits["color"] += color
        hits["background"] += background
        hits["both"] += color and background
        label = f"{record['caption']}  -> read: {seen['color']} on {seen['background']}"
        rows.append((label, frames_thw3))
    if overview is not None and rows:
        draw_overview(rows[:OVERVIEW_ROWS], overview)
    chance = 1 / len(COLORS)
    return {"videos": len(videos), **hits, "chance": chance, "chance_both": chance * chance}


def draw_overview(rows: list[tuple[str, np.ndarray]], path: Path, frames: int = 8, scale: int = 4) -> None:
    """One row per video: its label, then ``frames`` evenly spaced frames enlarged
    ``scale`` times (nearest: the pixels the model drew), on white."""
    gap, label_h = 2 * scale, 14
    height, width = rows[0][1].shape[1] * scale, rows[0][1].shape[2] * scale
    sheet = Image.new("RGB", (frames * (width + gap) - gap, len(rows) * (label_h + height + gap)), "white")
    pen = ImageDraw.Draw(sheet)
    for r, (label, frames_thw3) in enumerate(rows):
        top = r * (label_h + height + gap)
        pen.text((0, top), label, fill="black")
        picks = np.linspace(0, len(frames_thw3) - 1, frames).round().astype(int)
        for c, index in enumerate(picks):
            tile = Image.fromarray(frames_thw3[index]).resize((width, height), Image.NEAREST)
            sheet.paste(tile, (c * (width + gap), top + label_h))
    sheet.save(path)


def report(out: Path, data: Path) -> dict:
    summary = {"stages": {s: stage_summary(out / "runs" / s) for s in STAGES}}
    summary["releases"] = {
        s: str((out / "releases" / s).resolve())
        for s in STAGES
        if (out / "releases" / s / "release.json").is_file()
    }
    answers = out / "comprehension" / "answers.jsonl"
    if answers.is_file():
        summary["comprehension"] = comprehension_accuracy(
            answers, data / "annotations" / "val_video_qa.jsonl", data / "media"
        )
    generated = out / "generation" / "generated.jsonl"
    if generated.is_file():
        summary["generation"] = generation_colours(generated, overview=out / "generation" / "overview.png")
    return summary


def format_report(summary: dict, out: Path) -> str:
    lines = ["", "Demo report", "-----------"]
    for stage, s in summary["stages"].items():
        if not s["steps"]:
            continue
        text = f"{stage:9s} {s['steps']:4d} steps  train loss {s['train_loss'][0]:.3f} -> {s['train_loss'][1]:.3f}"
        for name, label in (("val_lm_loss", "val LM loss"), ("val_loss", "val loss")):
            if name in s:
                text += f"  {label} {s[name][0]:.3f} -> {s[name][1]:.3f}"
        lines.append(text)
        if "val_psnr" in s:
            guesses = [
                f"{label} {s[name][1]:.2f} dB"
                for name, label in (
                    ("val_psnr_mean_colour", "the clips' mean colour"),
                    ("val_psnr_clip_colour", "each clip's own"),
                )
                if name in s
            ]
            lines.append(
                f"{'':9s} held-out reconstructions: PSNR {s['val_psnr'][1]:.2f} dB; flat guesses: {', '.join(guesses)}"
            )
    for stage, path in summary["releases"].items():
        lines.append(f"release   {stage:9s} {path}")
    if "comprehension" in summary:
        c = summary["comprehension"]
        lines.append(
            f"held-out comprehension: shape colour named correctly for {c['correct']}/{c['videos']} videos "
            f"({c['accuracy']:.0%}; chance {c['chance']:.0%}) -> {out / 'comprehension' / 'answers.jsonl'}"
        )
    if "generation" in summary:
        g = summary["generation"]
        lines.append(
            f"generated videos for the held-out captions: shape colour {g['color']}/{g['videos']}, "
            f"background {g['background']}/{g['videos']}, both {g['both']}/{g['videos']} "
            f"(chance {g['chance']:.0%}, {g['chance']:.0%}, {g['chance_both']:.1%}) -> {out / 'generation'}"
        )
        lines.append(
            f"the first {OVERVIEW_ROWS} of them, frame by frame: {out / 'generation' / 'overview.png'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the demo's output folder (DEMO_OUT)")
    parser.add_argument(
        "--data", type=Path, default=Path("data/synthetic"), help="the demo's data (DEMO_DATA)"
    )
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    summary = report(args.out, args.data)
    print(format_report(summary, args.out))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
