"""``tools/demo_report.py --vidtok`` over a hand-made ``launch/demo_vidtok.sh`` output folder
(no training): tokenizer and stage losses from ``metrics.jsonl``, comprehension answers scored
against the held-out QA, generated mp4s read back for their colours, next to chance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from divot_llm.data.synthetic import COLORS
from divot_llm.data.video_codec import encode_video
from tests import helpers


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _scene_mp4(path: Path, shape: str, background: str) -> str:
    """16 frames of 32x32: a 12x12 ``shape``-coloured square moving right over ``background``."""
    frames_thw3 = np.empty((16, 32, 32, 3), dtype=np.uint8)
    frames_thw3[:] = COLORS[background]
    for t in range(16):
        frames_thw3[t, 10:22, 2 + t : 14 + t] = COLORS[shape]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_video(frames_thw3, fps=8))
    return str(path)


def _metrics(run: Path, train: list[dict], val: list[dict]) -> None:
    records = [{"kind": "train", **r} for r in train] + [{"kind": "val", **r} for r in val]
    _write_jsonl(run / "metrics.jsonl", records)


def test_vidtok_report_scores_each_path_next_to_chance(tmp_path):
    tool = helpers.load_tool("tools/demo_report.py")
    data, out = tmp_path / "data", tmp_path / "demo_vidtok"
    questions = [{"video": f"videos/v{i}.mp4", "question": "q", "answer": f"The shape is {c}."}
                 for i, c in enumerate(("red", "green", "blue"))]  # fmt: skip
    _write_jsonl(data / "annotations" / "val_video_qa.jsonl", questions)

    _metrics(
        out / "runs" / "vidtok_kl",
        [{"step": 1, "train/rec_loss": 0.9, "train/nll_loss": 2400.0}, {"step": 600, "train/rec_loss": 0.2}],
        [{"step": 0, "val/rec_loss": 0.8, "val/psnr": 7.0, "val/psnr_mean_colour": 8.7, "val/psnr_clip_colour": 11.8},
         {"step": 600, "val/rec_loss": 0.25, "val/psnr": 12.5, "val/psnr_mean_colour": 8.75, "val/psnr_clip_colour": 11.79}],
    )  # fmt: skip
    _metrics(
        out / "kl" / "runs" / "pretrain",
        [{"step": 1, "train/loss": 10.5}, {"step": 500, "train/loss": 1.25}],
        [
            {"step": 0, "val/lm_loss": 10.4, "val/gmm_nll": 30.0},
            {"step": 500, "val/lm_loss": 0.5, "val/gmm_nll": 4.0},
        ],
    )
    _metrics(
        out / "kl" / "runs" / "sft_comp",
        [{"step": 1, "train/loss": 2.0}, {"step": 500, "train/loss": 0.1}],
        [],
    )
    media = data / "media"
    _write_jsonl(  # kl: two of three right; fsq: all wrong
        out / "kl" / "comprehension" / "answers.jsonl",
        [
            {"media": str(media / q["video"]), "answer": a}
            for q, a in zip(questions, ("Red.", "green", "red"), strict=True)
        ],
    )
    _write_jsonl(
        out / "fsq" / "comprehension" / "answers.jsonl",
        [{"media": str(media / q["video"]), "answer": "white"} for q in questions],
    )
    generated = out / "kl" / "generation"
    _write_jsonl(
        generated / "generated.jsonl",
        [
            {"caption": "a red square moving right on a blue background",
             "video": _scene_mp4(generated / "0.mp4", "red", "blue")},
            {"caption": "a yellow circle moving left on a blue background",
             "video": _scene_mp4(generated / "1.mp4", "purple", "blue")},
        ],
    )  # fmt: skip

    reconstructed = out / "reconstruction" / "vidtok_kl"  # the tokenizer alone: both colours kept
    _write_jsonl(
        reconstructed / "reconstructed.jsonl",
        [{"caption": "a green circle moving up on a white background",
          "video": _scene_mp4(reconstructed / "0.mp4", "green", "white")}],
    )  # fmt: skip

    assert tool.main([str(out), "--vidtok", "--data", str(data), "--seconds", "1510",
                      "--json", str(out / "report.json"), "--markdown", str(out / "report.md")]) == 0  # fmt: skip
    summary = json.loads((out / "report.json").read_text())
    assert summary["run_seconds"] == 1510 and summary["chance"] == 1 / len(COLORS)
    assert set(summary["tokenizers"]) == {"vidtok_kl"}  # the FSQ tokenizer did not run
    assert summary["tokenizers"]["vidtok_kl"]["val_psnr"] == [7.0, 12.5]
    kl, fsq = summary["paths"]["kl"], summary["paths"]["fsq"]
    assert kl["stages"]["pretrain"] == {
        "steps": 500, "train_loss": [10.5, 1.25], "val_lm_loss": [10.4, 0.5], "val_gmm_nll": [30.0, 4.0]
    }  # fmt: skip
    assert kl["stages"]["sft_gen"] == {"steps": 0} and "detok" not in kl["stages"]
    assert (kl["comprehension"]["correct"], fsq["comprehension"]["correct"]) == (2, 0)
    assert {k: kl["generation"][k] for k in ("videos", "color", "background", "both")} == {
        "videos": 2, "color": 1, "background": 2, "both": 1
    }  # fmt: skip
    assert "generation" not in fsq and (generated / "overview.png").is_file()
    assert set(summary["round_trips"]) == {"vidtok_kl"} and summary["round_trips"]["vidtok_kl"]["both"] == 1

    text = (out / "report.md").read_text()
    assert text.startswith("# VidTok demo report\n\nRun time: 25 min 10 s")
    assert (
        "| vidtok_kl | 600 | 0.900 → 0.200 | 0.800 → 0.250 | 7.000 → 12.500 dB | 8.75 dB / 11.79 dB |" in text
    )
    assert "| kl | pretrain | 500 | 10.500 → 1.250 | 10.400 → 0.500 | 30.000 → 4.000 |" in text
    assert "| kl | sft_comp | 500 | 2.000 → 0.100 | – | – |" in text
    assert "| 2/3 (67%) | 1/2 (50%) | 2/2 (100%) | 1/2 (50%) |" in text
    assert "| 0/3 (0%) | – | – | – |" in text
    assert (
        "| vidtok_kl alone: the held-out videos reconstructed | – | 1/1 (100%) | 1/1 (100%) | 1/1 (100%) |"
        in text
    )
    assert "| chance | 11% | 11% | 11% | 1.2% |" in text
