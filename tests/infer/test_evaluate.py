"""divot-eval reconstruction and divot-infer reconstruct --video-tokenizer on the tiny VidTok:
the reported metrics equal a direct computation on the same videos, and the outputs (table,
json, plot; mp4, strip, metrics.json) are what they say."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from divot_llm.cli.eval import main as eval_main
from divot_llm.cli.infer import main as infer_main
from divot_llm.config import compose_config
from divot_llm.data.clip_sampling import model_pixels_to_uint8
from divot_llm.data.video_codec import encode_video
from divot_llm.infer.eval_report import SEED_COLUMNS
from divot_llm.infer.evaluate import list_videos, read_video
from divot_llm.metrics import frechet_distance, i3d_features, load_i3d, psnr, ssim
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.tokenizers.registry import load_video_tokenizer
from tests.helpers import run_main

SIZE = ("--height", "16", "--width", "16", "--fps", "15")


def moving_frames(count: int, height: int, width: int, phase: float) -> np.ndarray:
    """A smooth pattern sliding sideways: (count, height, width, 3) uint8."""
    t = np.arange(count)[:, None, None]
    y, x = np.mgrid[0:height, 0:width]
    wave = 0.5 + 0.4 * np.sin((x[None] + 2 * t) / 5 + phase) * np.cos(y[None] / 7)
    rgb = np.stack([wave, wave[:, ::-1], 1 - wave], axis=-1)
    return (rgb * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    """DATA_DIR: two 30-fps videos (24 and 22 frames; read at 15 fps: 12 and 11) in nested
    folders, a meta CSV naming them, and a file that is not a video."""
    root = tmp_path_factory.mktemp("eval_videos")
    (root / "a").mkdir()
    (root / "b" / "c").mkdir(parents=True)
    (root / "a" / "one.mp4").write_bytes(encode_video(moving_frames(24, 24, 32, 0.0), 30))
    (root / "b" / "c" / "two.mp4").write_bytes(encode_video(moving_frames(22, 20, 20, 1.0), 30))
    (root / "b" / "broken.mp4").write_bytes(b"not a video")
    (root / "meta.csv").write_text("videos,caption\na/one.mp4,x\nb/c/two.mp4,y\n")
    return root


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """The tiny VidTok's random weights as save_pretrained writes them (--ckpt takes it)."""
    torch.manual_seed(5)
    tokenizer = build_video_tokenizer(compose_config(["video_tokenizer=vidtok_tiny"]).video_tokenizer)
    out = tmp_path_factory.mktemp("vidtok") / "vidtok_tiny"
    tokenizer.save_pretrained(out)
    return out


def direct_scores(tokenizer, path):
    """What the CLIs must report for one video, computed from the public pieces."""
    frames, _ = read_video(path, 16, 16, 15)
    recon = tokenizer.reconstruct(frames[None]).clamp(-1, 1)
    assert recon.shape == frames[None].shape  # every frame kept
    return frames, recon[0], psnr(recon, frames[None]).item(), ssim(recon, frames[None]).item()


def test_eval_reconstruction_reports_the_metrics_of_a_direct_computation(
    video_dir, tokenizer_dir, lpips_files, i3d_file, tmp_path, capsys
):
    out = tmp_path / "eval"
    code, stdout, stderr = run_main(
        eval_main, "reconstruction", str(video_dir), *SIZE, "--video-tokenizer", "vidtok_tiny",
        "--ckpt", str(tokenizer_dir), "--lpips", str(lpips_files.vgg), "--lpips-heads", str(lpips_files.heads),
        "--i3d", str(i3d_file), "--fvd-frames", "10", "--out", str(out), capsys=capsys, check=False,
    )  # fmt: skip
    assert code == 3 and "skipped b/broken.mp4 (corrupt_video)" in stderr  # the others were scored
    report = json.loads((out / "results.json").read_text())
    assert [v["video"] for v in report["videos"]] == ["a/one.mp4", "b/c/two.mp4"]

    tokenizer = load_video_tokenizer(tokenizer_dir)  # the weights --ckpt named
    lpips = lpips_files.model  # the weights --lpips and --lpips-heads named
    i3d = load_i3d(i3d_file)
    real, fake, frames_total, sums = [], [], 0, np.zeros(3)
    for record, name in zip(report["videos"], ["a/one.mp4", "b/c/two.mp4"], strict=True):
        frames, recon, psnr_value, ssim_value = direct_scores(tokenizer, video_dir / name)
        lpips_value = lpips.clips(recon[None], frames[None]).item()
        assert record["frames"] == len(frames) == {"a/one.mp4": 12, "b/c/two.mp4": 11}[name]
        assert record["psnr"] == pytest.approx(psnr_value, rel=1e-5)
        assert record["ssim"] == pytest.approx(ssim_value, rel=1e-5)
        assert record["lpips"] == pytest.approx(lpips_value, rel=1e-4)
        real.append(i3d_features(i3d, frames[None, :10]))
        fake.append(i3d_features(i3d, recon[None, :10]))
        frames_total += len(frames)
        sums += len(frames) * np.array([psnr_value, ssim_value, lpips_value])
    summary = report["summary"]
    assert summary["frames"] == frames_total  # means over all frames, as VidTok's
    np.testing.assert_allclose(
        [summary["psnr"], summary["ssim"], summary["lpips"]], sums / frames_total, rtol=1e-4
    )
    assert report["fvd_clips"] == 2
    assert summary["fvd"] == pytest.approx(frechet_distance(torch.cat(real), torch.cat(fake)), rel=1e-6)

    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| " + " | ".join(SEED_COLUMNS) + " |"
    assert (
        table[2].startswith("| vidtok_tiny | KL-4chn | ✔️ | 4x8x8 | ")
        and f"{summary['fvd']:.1f} |" in table[2]
    )
    assert any(line.startswith("| a/one.mp4 | 12 | ") for line in table)
    assert table[0] in stdout
    plot = Image.open(out / "per_video.png")
    assert plot.width > 3 * 220 and plot.height > 2 * 18  # three metric panels, a row per video


def test_eval_reads_the_meta_csv_and_refuses_paths_outside_data_dir(
    video_dir, tokenizer_dir, tmp_path, capsys
):
    assert [name for name, _ in list_videos(video_dir, video_dir / "meta.csv")] == [
        "a/one.mp4",
        "b/c/two.mp4",
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("videos\na/one.mp4\n../outside.mp4\n")
    code, _, stderr = run_main(
        eval_main, "reconstruction", str(video_dir), "--meta", str(bad), *SIZE, "--video-tokenizer", "vidtok_tiny",
        "--ckpt", str(tokenizer_dir), "--out", str(tmp_path / "out"), capsys=capsys, check=False,
    )  # fmt: skip
    assert code == 1 and "escapes" in stderr and not (tmp_path / "out").exists()


def test_infer_reconstruct_with_a_video_tokenizer_writes_mp4_strip_and_metrics(video_dir, tmp_path, capsys):
    # a saved tokenizer whose shape is not any conf option's (as divot-export vidtok writes
    # a trained one): --video-tokenizer takes the folder, with its own config
    video = video_dir / "a" / "one.mp4"
    torch.manual_seed(6)
    saved = tmp_path / "video_tokenizer"
    build_video_tokenizer(
        compose_config(["video_tokenizer=vidtok_tiny", "video_tokenizer.ch_mult=[1,2,2]"]).video_tokenizer
    ).save_pretrained(saved)
    run_main(
        infer_main, "reconstruct", "--video-tokenizer", str(saved), *SIZE, str(video), "--out", str(tmp_path),
        capsys=capsys,
    )  # fmt: skip
    tokenizer = load_video_tokenizer(saved)
    frames, _, psnr_value, ssim_value = direct_scores(tokenizer, video)
    (record,) = json.loads((tmp_path / "metrics.json").read_text())
    assert record["psnr"] == pytest.approx(psnr_value, rel=1e-5) and record["ssim"] == pytest.approx(
        ssim_value, rel=1e-5
    )
    assert record["frames"] == 12 and record["fps"] == 15.0
    with av.open(record["output"]) as container:
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(stream)) == 12 and stream.average_rate == 15
    strip = Image.open(record["strip"])
    assert strip.size == (8 * 16 + 7 * 2, 2 * 16 + 2)  # input above output, 8 frames
    assert np.array_equal(np.asarray(strip)[:16, :16], model_pixels_to_uint8(frames[:1])[0])  # input on top


def test_a_ten_second_video_comes_back_with_every_frame(tokenizer_dir, tmp_path, capsys):
    """A 10-second synthetic mp4 (80 frames at 8 fps): chunked encode/decode (five 17-frame
    chunks, the last padded) gives back a decodable mp4 of all 80 frames."""
    video = tmp_path / "ten_seconds.mp4"
    video.write_bytes(encode_video(moving_frames(80, 16, 16, 0.5), 8))
    run_main(
        infer_main, "reconstruct", "--video-tokenizer", str(tokenizer_dir), "--height", "16", "--width", "16",
        "--fps", "8", str(video), "--out", str(tmp_path / "out"), capsys=capsys,
    )  # fmt: skip
    (record,) = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert record["frames"] == 80
    with av.open(record["output"]) as container:
        assert sum(1 for _ in container.decode(video=0)) == 80
