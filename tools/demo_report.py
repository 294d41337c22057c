"""Summarise a ``launch/demo.sh`` run: losses per stage, releases, comprehension accuracy,
and how well the generated videos show what their captions ask for.

    python tools/demo_report.py outputs/demo
    python tools/demo_report.py outputs/demo_vidtok --vidtok --markdown outputs/demo_vidtok/report.md

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

``--vidtok`` reads a ``launch/demo_vidtok.sh`` run instead: the tiny VidToks' training
(``runs/vidtok_kl``, ``runs/vidtok_fsq``: losses, held-out PSNR next to the flat guesses),
and for each path (``kl/``, ``fsq/``: the LLM over KL latents or FSQ codes, laid out as the
main demo's output) the same stage, comprehension and generation numbers, as markdown
tables, with the held-out videos reconstructed through each tokenizer alone
(``reconstruction/<tokenizer>/reconstructed.jsonl``) scored for colour as the generated
ones: what the tokenizer's decoder can show at best. ``--seconds`` adds the run time; ``--markdown`` writes the printed report to a file.
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

LLM_STAGES = ("pretrain", "sft_comp", "sft_gen")
STAGES = (*LLM_STAGES, "detok")
# launch/demo_vidtok.sh: its paths (each a folder laid out as the main demo's output) and
# the tokenizer run each path's LLM reads
VIDTOK_PATHS = {
    "kl": ("vidtok_kl", "KL latents, normalised, through the GMM head (model.head=gmm)"),
    "fsq": ("vidtok_fsq", "FSQ codes through the factorized softmax head (model.head=fsq_factorized)"),
}
OVERVIEW_ROWS = 6  # generated videos drawn in generation/overview.png
VAL_KEYS = {  # metrics.jsonl key -> report key (first and last validation)
    "val/lm_loss": "val_lm_loss",
    "val/gmm_nll": "val_gmm_nll",  # the generation head's loss on held-out queries
    "val/rec_loss": "val_rec_loss",  # a VidTok's reconstruction (L1) loss
    "val/loss": "val_loss",
    "val/psnr": "val_psnr",
    "val/psnr_mean_colour": "val_psnr_mean_colour",
    "val/psnr_clip_colour": "val_psnr_clip_colour",
}


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def stage_summary(run: Path, loss: str = "train/loss") -> dict:
    """Steps, the first and last training ``loss`` (a metrics.jsonl key), and the first
    and last value of each ``VAL_KEYS`` metric the run validated."""
    records = _records(run)
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    out = {"steps": train[-1]["step"] if train else 0}
    if train:
        out["train_loss"] = [train[0][loss], train[-1][loss]]
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


def report(out: Path, data: Path, stages: tuple[str, ...] = STAGES) -> dict:
    summary = {"stages": {s: stage_summary(out / "runs" / s) for s in stages}}
    summary["releases"] = {
        s: str((out / "releases" / s).resolve())
        for s in stages
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


def vidtok_report(out: Path, data: Path) -> dict:
    """The numbers of a ``launch/demo_vidtok.sh`` run: its tokenizers' training and the
    colours of the held-out videos reconstructed through each, and per path that ran (a
    folder under ``out``) what ``report`` gives for the LLM stages."""
    return {
        "tokenizers": {
            # the reconstruction term: the NLL beside it is scaled by a learnt variance
            run: stage_summary(out / "runs" / run, loss="train/rec_loss")
            for run, _ in VIDTOK_PATHS.values()
            if (out / "runs" / run).is_dir()
        },
        # the held-out videos through each tokenizer alone: the colours its decoder can show
        "round_trips": {
            run: generation_colours(folder / "reconstructed.jsonl", overview=folder / "overview.png")
            for run, _ in VIDTOK_PATHS.values()
            if ((folder := out / "reconstruction" / run) / "reconstructed.jsonl").is_file()
        },
        "paths": {
            path: report(out / path, data, LLM_STAGES) for path in VIDTOK_PATHS if (out / path).is_dir()
        },
        "chance": 1 / len(COLORS),
    }


def _change(pair: list[float] | None, unit: str = "") -> str:
    """``first -> last`` of a summary pair, or a dash where the run did not log it."""
    return f"{pair[0]:.3f} → {pair[1]:.3f}{unit}" if pair else "–"


def _share(hits: int, total: int) -> str:
    return f"{hits}/{total} ({hits / max(1, total):.0%})"


def format_vidtok_report(summary: dict, out: Path) -> str:
    """The ``vidtok_report`` numbers as a markdown document: tokenizers, LLM stages per
    path, and the held-out comprehension and generation scores next to chance."""
    chance = summary["chance"]
    lines = ["# VidTok demo report", ""]
    if "run_seconds" in summary:
        minutes, seconds = divmod(int(summary["run_seconds"]), 60)
        lines += [f"Run time: {minutes} min {seconds} s ({out}).", ""]
    lines += [
        "## Tokenizers (experiment=vidtok_tiny)",
        "",
        "| tokenizer | steps | train L1 loss | val L1 loss | held-out PSNR "
        "| flat guesses: the clips' mean colour / each clip's own |",
        "|---|---|---|---|---|---|",
    ]
    for run, s in summary["tokenizers"].items():
        guesses = " / ".join(
            f"{s[name][1]:.2f} dB" for name in ("val_psnr_mean_colour", "val_psnr_clip_colour") if name in s
        )
        lines.append(
            f"| {run} | {s['steps']} | {_change(s.get('train_loss'))} | {_change(s.get('val_rec_loss'))} | "
            f"{_change(s.get('val_psnr'), ' dB')} | {guesses or '–'} |"
        )
    lines += [
        "",
        "## LLM stages",
        "",
        "| path | stage | steps | train loss | val LM loss | val generation loss |",
        "|---|---|---|---|---|---|",
    ]
    for path, p in summary["paths"].items():
        for stage, s in p["stages"].items():
            if s["steps"]:
                lines.append(
                    f"| {path} | {stage} | {s['steps']} | {_change(s.get('train_loss'))} | "
                    f"{_change(s.get('val_lm_loss'))} | {_change(s.get('val_gmm_nll'))} |"
                )
    lines += [
        "",
        "## Held-out videos and captions",
        "",
        "| path | comprehension: shape colour named | video: caption's shape colour | background colour | both |",
        "|---|---|---|---|---|",
    ]
    for run, g in summary["round_trips"].items():
        cells = ["–", *(_share(g[k], g["videos"]) for k in ("color", "background", "both"))]
        lines.append(f"| {run} alone: the held-out videos reconstructed | {' | '.join(cells)} |")
    for path, p in summary["paths"].items():
        c, g = p.get("comprehension"), p.get("generation")
        cells = [_share(c["correct"], c["videos"]) if c else "–"]
        cells += [_share(g[k], g["videos"]) if g else "–" for k in ("color", "background", "both")]
        lines.append(f"| {path}: {VIDTOK_PATHS[path][1]} | {' | '.join(cells)} |")
    lines += [f"| chance | {chance:.0%} | {chance:.0%} | {chance:.0%} | {chance * chance:.1%} |", ""]
    for run in summary["round_trips"]:
        lines.append(f"- {run}: reconstructions in {out / 'reconstruction' / run} (overview.png)")
    for path in summary["paths"]:
        lines.append(
            f"- {path}: answers in {out / path / 'comprehension' / 'answers.jsonl'}; videos in "
            f"{out / path / 'generation'} (the first {OVERVIEW_ROWS}, frame by frame: overview.png)"
        )
    return "\n".join(lines)


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
    parser.add_argument("--markdown", type=Path, help="also write the printed report here")
    parser.add_argument(
        "--vidtok", action="store_true", help="OUT is a launch/demo_vidtok.sh run (DEMO_OUT of that demo)"
    )
    parser.add_argument("--seconds", type=int, help="the run's wall time, for the report")
    args = parser.parse_args(argv)
    summary = vidtok_report(args.out, args.data) if args.vidtok else report(args.out, args.data)
    if args.seconds is not None:
        summary["run_seconds"] = args.seconds
    text = (format_vidtok_report if args.vidtok else format_report)(summary, args.out)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
