"""Summarise a ``launch/demo.sh`` run: losses per stage, releases, comprehension accuracy.

    python tools/demo_report.py outputs/demo

Reads each stage's ``metrics.jsonl`` (first and last training loss, validation before and
after), the releases' ``release.json``, and ``comprehension/answers.jsonl`` against the
held-out questions of the synthetic set (``annotations/val_video_qa.jsonl``): the share of
held-out videos whose shape colour the SFT-comp model names, next to chance (one of the
palette's colours at random). ``--json`` writes the numbers for scripts and tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from divot_llm.data.synthetic import COLORS, named_color

STAGES = ("pretrain", "sft_comp", "sft_gen")


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
    if val:
        key = "val/lm_loss"
        out["val_lm_loss"] = [val[0][key], val[-1][key]]
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
    return summary


def format_report(summary: dict, out: Path) -> str:
    lines = ["", "Demo report", "-----------"]
    for stage, s in summary["stages"].items():
        if not s["steps"]:
            continue
        text = f"{stage:9s} {s['steps']:4d} steps  train loss {s['train_loss'][0]:.3f} -> {s['train_loss'][1]:.3f}"
        if "val_lm_loss" in s:
            text += f"  val LM loss {s['val_lm_loss'][0]:.3f} -> {s['val_lm_loss'][1]:.3f}"
        lines.append(text)
    for stage, path in summary["releases"].items():
        lines.append(f"release   {stage:9s} {path}")
    if "comprehension" in summary:
        c = summary["comprehension"]
        lines.append(
            f"held-out comprehension: shape colour named correctly for {c['correct']}/{c['videos']} videos "
            f"({c['accuracy']:.0%}; chance {c['chance']:.0%}) -> {out / 'comprehension' / 'answers.jsonl'}"
        )
    generated = sorted((out / "generation").glob("*.safetensors")) if (out / "generation").is_dir() else []
    if generated:
        lines.append(f"generated features: {', '.join(str(p) for p in generated)}")
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
