"""divot-infer on a release written by divot-merge: comprehend (streamed, batched),
generate (features, and mp4 through a de-tokenizer), reconstruct (mp4, strip, PSNR/SSIM)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import av
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from divot_llm.cli.infer import main as infer_main
from divot_llm.config import compose_config
from divot_llm.detokenizers import build_video_detokenizer
from divot_llm.infer import (
    comprehend,
    generate_features_for_captions,
    load_inference_models,
    reconstruct,
    release_config,
)
from tests.helpers import run_entry_point, run_main

CAPTION = "a red circle moving left on a blue background"


@pytest.fixture(scope="module")
def models(tiny_release):
    return load_inference_models(release_config(tiny_release))


@pytest.fixture(scope="module")
def detok_dir(models, tmp_path_factory):
    """A tiny de-tokenizer as de-tokenizer training saves it (save_pretrained)."""
    torch.manual_seed(3)
    detok = build_video_detokenizer(
        compose_config(["detokenizer=tiny"]).detokenizer, tokenizer=models.video_tokenizer
    )
    out = tmp_path_factory.mktemp("detok") / "detokenizer"
    detok.save_pretrained(out)
    return out


def test_comprehend_streams_and_batches_the_library_answers(
    tiny_release, models, synthetic_video, tmp_path, capsys
):
    greedy = ["--greedy", "--num-clips", "2", "--max-new-tokens", "8", "-q", "What color is the shape?"]
    expected = comprehend(models.model, models.text_tokenizer, models.video_tokenizer, [synthetic_video],
                          "What color is the shape?", num_clips=2, seed=42, do_sample=False, max_new_tokens=8)[0]  # fmt: skip
    streamed = run_entry_point(
        "divot-infer", "comprehend", "--release", str(tiny_release), str(synthetic_video), *greedy
    )
    assert streamed.stdout == f"{synthetic_video}: {expected}\n"
    _, batched, _ = run_main(
        infer_main, "comprehend", "--release", str(tiny_release), str(synthetic_video), str(synthetic_video),
        *greedy, "--no-stream", "--batch-size", "2", "--jsonl", str(tmp_path / "answers.jsonl"), capsys=capsys,
    )  # fmt: skip
    assert batched.splitlines() == [f"{synthetic_video}: {expected}"] * 2
    records = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in records] == [expected, expected]


def test_comprehend_skips_files_it_cannot_read_and_answers_every_other(
    tiny_release, models, synthetic_video, tmp_path, capsys
):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(synthetic_video.read_bytes()[:600])  # an interrupted download
    missing = tmp_path / "missing.mp4"
    greedy = ["--greedy", "--num-clips", "2", "--max-new-tokens", "6", "-q", "What color is the shape?"]
    expected = comprehend(models.model, models.text_tokenizer, models.video_tokenizer, [synthetic_video],
                          "What color is the shape?", num_clips=2, seed=42, do_sample=False, max_new_tokens=6)[0]  # fmt: skip
    jsonl = tmp_path / "out" / "answers.jsonl"
    media = [str(synthetic_video), str(cut), str(missing), str(synthetic_video)]
    code, out, err = run_main(
        infer_main, "comprehend", "--release", str(tiny_release), *media, *greedy, "--no-stream",
        "--batch-size", "2", "--jsonl", str(jsonl), capsys=capsys, check=False,
    )  # fmt: skip
    assert code == 3  # some inputs skipped
    assert f"divot-infer: skipped {cut} (corrupt_video): " in err
    assert f"divot-infer: skipped {missing} (missing_file): {missing}: no such file" in err
    assert "2 of 4 inputs done, 2 skipped" in err
    assert out.splitlines() == [f"{synthetic_video}: {expected}"] * 2
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert (
        records
        == [{"media": str(synthetic_video), "question": "What color is the shape?", "answer": expected}] * 2
    )

    # streamed: a bad file never leaves a dangling "path: " on stdout
    code, out, err = run_main(infer_main, "comprehend", "--release", str(tiny_release), str(cut),
                              str(synthetic_video), *greedy, capsys=capsys, check=False)  # fmt: skip
    assert code == 3 and out == f"{synthetic_video}: {expected}\n"
    assert f"skipped {cut} (corrupt_video)" in err


def test_generate_without_a_detokenizer_saves_the_features(tiny_release, models, tmp_path, capsys):
    _, out, _ = run_main(infer_main, "generate", "--release", str(tiny_release), CAPTION,
                         "--out", str(tmp_path), "--seed", "7", "--var-scale", "0.5", capsys=capsys)  # fmt: skip
    assert "only the features were saved" in out
    saved = load_file(next(tmp_path.glob("000_a_red_circle*.safetensors")))["features"]
    expected = generate_features_for_captions(
        models.model, models.text_tokenizer, [CAPTION], instruct=False, var_scale=0.5, seed=7
    )  # fmt: skip  (a pretrain release)
    assert torch.equal(saved, expected[0])
    assert not list(tmp_path.glob("*.mp4"))


def test_generate_with_a_detokenizer_writes_playable_videos(tiny_release, detok_dir, tmp_path, capsys):
    run_main(infer_main, "generate", "--release", str(tiny_release), CAPTION, "a green square",
             "--out", str(tmp_path), "--detokenizer", str(detok_dir), "--steps", "2",
             "--jsonl", str(tmp_path / "generated.jsonl"), capsys=capsys)  # fmt: skip
    videos = sorted(tmp_path.glob("*.mp4"))
    assert [v.name[:3] for v in videos] == ["000", "001"]
    records = [json.loads(line) for line in (tmp_path / "generated.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in records] == [CAPTION, "a green square"]
    assert [Path(r["video"]) for r in records] == videos
    assert Image.open(records[1]["strip"]).size == (8 * 16 + 7 * 2, 16)  # 8 frames in one row
    with av.open(str(videos[0])) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert float(container.streams.video[0].average_rate) == 8
    assert len(frames) == 8 and frames[0].shape == (16, 16, 3)  # the tiny de-tokenizer's clip


def test_reconstruct_writes_video_strip_and_the_metrics(
    tiny_release, models, detok_dir, synthetic_video, tmp_path
):
    proc = run_entry_point("divot-infer", "reconstruct", "--release", str(tiny_release), str(synthetic_video),
                           "--detokenizer", str(detok_dir), "--steps", "2", "--out", str(tmp_path))  # fmt: skip
    from divot_llm.detokenizers.registry import load_video_detokenizer

    expected = reconstruct(
        synthetic_video, models.video_tokenizer, load_video_detokenizer(detok_dir), steps=2, seed=42
    )
    psnr, ssim = map(float, re.search(r"PSNR ([\d.]+) dB, SSIM ([\d.]+)", proc.stdout).groups())
    assert psnr == pytest.approx(expected.psnr, abs=0.01) and ssim == pytest.approx(expected.ssim, abs=1e-4)
    strip = Image.open(next(tmp_path.glob("*_strip.png")))
    assert strip.size == (8 * 16 + 7 * 2, 2 * 16 + 2)  # 8 frames, input row above output row
    assert next(tmp_path.glob("000_*.mp4")).stat().st_size > 0


def test_reconstruct_without_weights_is_a_clear_error(tiny_release, synthetic_video, tmp_path, capsys):
    code, _, err = run_main(infer_main, "reconstruct", "--release", str(tiny_release), str(synthetic_video),
                            "--out", str(tmp_path), capsys=capsys, check=False)  # fmt: skip
    assert code == 1 and "needs a de-tokenizer with weights" in err


def test_generate_and_reconstruct_skip_a_bad_input_and_do_the_rest(
    tiny_release, detok_dir, synthetic_video, tmp_path, capsys
):
    # bytes that are not UTF-8 on a command line reach Python as lone surrogates
    code, out, err = run_main(infer_main, "generate", "--release", str(tiny_release), "bad \udcff caption",
                              CAPTION, "--out", str(tmp_path / "gen"), capsys=capsys, check=False)  # fmt: skip
    assert code == 3 and "divot-infer: skipped 'bad \\udcff caption' (bad_text): not valid UTF-8" in err
    saved = [p.name[:4] for p in (tmp_path / "gen").glob("*.safetensors")]
    assert saved == ["001_"]  # file names keep the input's order

    cut = tmp_path / "cut.mp4"
    cut.write_bytes(synthetic_video.read_bytes()[:600])
    code, out, err = run_main(infer_main, "reconstruct", "--release", str(tiny_release), str(cut),
                              str(synthetic_video), "--detokenizer", str(detok_dir), "--steps", "2",
                              "--out", str(tmp_path / "rec"), capsys=capsys, check=False)  # fmt: skip
    assert code == 3 and f"divot-infer: skipped {cut} (corrupt_video): " in err
    assert f"{synthetic_video}: PSNR " in out
    assert [p.name[:4] for p in (tmp_path / "rec").glob("*.mp4")] == ["001_"]


def test_reconstruct_through_a_saved_vdm_detokenizer(tiny_release, models, synthetic_video, tmp_path, capsys):
    # the pixel-space video-diffusion de-tokenizer (detokenizer=vdm_tiny) as stage=detok saves it
    torch.manual_seed(5)
    detok = build_video_detokenizer(
        compose_config(["detokenizer=vdm_tiny"]).detokenizer, tokenizer=models.video_tokenizer
    )
    detok.save_pretrained(tmp_path / "vdm")
    _, out, _ = run_main(infer_main, "reconstruct", "--release", str(tiny_release), str(synthetic_video),
                         "--detokenizer", str(tmp_path / "vdm"), "--steps", "2", "--out", str(tmp_path / "rec"),
                         capsys=capsys)  # fmt: skip
    from divot_llm.detokenizers.registry import load_video_detokenizer

    expected = reconstruct(
        synthetic_video, models.video_tokenizer, load_video_detokenizer(tmp_path / "vdm"), steps=2, seed=42
    )
    psnr = float(re.search(r"PSNR ([\d.]+) dB", out).group(1))
    assert psnr == pytest.approx(expected.psnr, abs=0.01)
    with av.open(str(next((tmp_path / "rec").glob("000_*.mp4")))) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 8 and frames[0].shape == (16, 16, 3)  # vdm_tiny's clip
    assert next((tmp_path / "rec").glob("*_strip.png")).stat().st_size > 0
