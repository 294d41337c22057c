"""What ``divot-eval reconstruction`` writes: a markdown table in the columns of VidTok's
README table (Model | Regularizer | Causal | VCR | PSNR | SSIM | LPIPS | FVD) with a
per-video table under it, the numbers as json, and a per-video bar plot (PNG, drawn with
PIL as the project's other figures are)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from divot_llm.infer.evaluate import EvalReport

SEED_COLUMNS = ("Model", "Regularizer", "Causal", "VCR", "PSNR", "SSIM", "LPIPS", "FVD")
# (key, title, decimals) of the metrics, as the seed table rounds them
METRICS = (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3), ("lpips", "LPIPS (lower is better)", 3))
MISSING = "-"  # a metric whose weights were not given


def _number(value: float | None, decimals: int) -> str:
    return MISSING if value is None else f"{value:.{decimals}f}"


def markdown(report: EvalReport) -> str:
    """The summary row in the seed README's columns, the settings, then one row per video."""
    s, summary, tok = report.settings, report.summary(), report.tokenizer
    row = (s.model, tok["regularizer"], tok["causal"], tok["vcr"],
           *(_number(summary[key], decimals) for key, _, decimals in METRICS),
           _number(summary["fvd"], 1))  # fmt: skip
    lines = [
        "| " + " | ".join(SEED_COLUMNS) + " |",
        "|" + "---|" * len(SEED_COLUMNS),
        "| " + " | ".join(row) + " |",
        "",
        f"{summary['videos']} videos, {summary['frames']} frames at {s.fps:g} fps, "
        f"{s.width}x{s.height} (resized to cover, centre-cropped); PSNR/SSIM/LPIPS are means over all frames.",
    ]
    if s.fvd:
        lines.append(
            f"FVD: I3D features of {report.fvd_clips} non-overlapping {s.fvd_frames}-frame clips per set "
            f"(input vs reconstruction), shorter side resized to 224."
            + (f" {report.fvd_note}." if report.fvd_note else "")
        )
    lines += ["", "| video | frames | PSNR | SSIM | LPIPS |", "|---|---|---|---|---|"]
    for v in report.videos:
        values = (_number(getattr(v, key), decimals) for key, _, decimals in METRICS)
        lines.append(f"| {v.video} | {v.frames} | " + " | ".join(values) + " |")
    if report.skipped:
        lines += ["", "Skipped (could not be read):"]
        lines += [f"- {s['video']}: {s['reason']} {s['detail']}".rstrip() for s in report.skipped]
    return "\n".join(lines) + "\n"


def bar_plot(report: EvalReport, label_chars: int = 40) -> Image.Image:
    """One row per video, one panel per computed metric: a bar scaled to the panel's
    largest value (SSIM to 1), the value at its end, and a grey line at the mean over all
    frames."""
    metrics = [m for m in METRICS if report.summary()[m[0]] is not None]
    row_h, panel_w, label_w, header_h, pad = 18, 220, 6 * label_chars + 10, 34, 8
    width = label_w + len(metrics) * (panel_w + pad) + pad
    height = header_h + row_h * max(1, len(report.videos)) + pad
    sheet = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(sheet)
    pen.text((pad, pad), f"{report.settings.model}", fill="black")
    for row, video in enumerate(report.videos):
        name = video.video if len(video.video) <= label_chars else "..." + video.video[-label_chars + 3 :]
        pen.text((pad, header_h + row * row_h + 3), name, fill="black")
    summary = report.summary()
    for column, (key, title, decimals) in enumerate(metrics):
        left = label_w + column * (panel_w + pad)
        bar_w = panel_w - 50  # room for the value after the longest bar
        top_value = 1.0 if key == "ssim" else max(max(getattr(v, key) for v in report.videos), 1e-9)
        pen.text((left, pad), f"{title}  mean {_number(summary[key], decimals)}", fill="black")
        mean_x = left + round(bar_w * max(summary[key], 0.0) / top_value)
        pen.line(
            (mean_x, header_h - 4, mean_x, height - pad), fill=(150, 150, 150), width=1
        )  # under the bars
        for row, video in enumerate(report.videos):
            value = getattr(video, key)
            y = header_h + row * row_h
            length = round(bar_w * max(value, 0.0) / top_value)
            pen.rectangle((left, y + 3, left + length, y + row_h - 3), fill=(70, 110, 180))
            pen.text((left + length + 4, y + 3), _number(value, decimals), fill="black")
    return sheet


def write_report(report: EvalReport, out: str | Path) -> dict[str, Path]:
    """``results.md``, ``results.json`` and ``per_video.png`` in the folder ``out``
    (created); returns their paths by kind."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": folder / "results.md",
        "json": folder / "results.json",
        "plot": folder / "per_video.png",
    }
    paths["markdown"].write_text(markdown(report), encoding="utf-8")
    paths["json"].write_text(
        json.dumps(report.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    bar_plot(report).save(paths["plot"])
    return paths
