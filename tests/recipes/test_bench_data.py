"""tools/bench/data.py: the baseline loads the same pixels as the pipeline, and a quick
run prints both throughputs. Speed itself is never asserted."""

from __future__ import annotations

import re

import numpy as np
import torch

from divot_llm.data.clip_sampling import plan_windows, uint8_to_model_pixels
from tests import helpers

BENCH = helpers.REPO_ROOT / "tools" / "bench" / "data.py"
ROW = re.compile(
    r"^(comprehension|generation) +(\S+(?: \S+)?) +([\d.]+) +([\d.]+) +(\d+) \| +([\d.]+) +([\d.]+) \| +([\d.]+) +([\d.]+) \| +([\d.]+)x$"
)


def test_baseline_and_pipeline_load_identical_clips():
    bench = helpers.load_tool("tools/bench/data.py")
    # 12 s: consecutive 2-s clips; 41 s: one clip per segment (the pipeline seeks)
    for duration_s, comprehension_clips in ((12, 6), (41, 20)):
        data = bench.make_video(height=64, duration_s=duration_s, fps=8, seed=0)
        for num_clips in bench.TASKS.values():
            fast = bench.pipeline(data, num_clips, np.random.default_rng(1))
            slow = bench.baseline(data, num_clips, np.random.default_rng(1))
            assert fast.shape[0] == min(num_clips, comprehension_clips)
            assert fast.shape == slow.shape and fast.shape[1:] == (5, 3, 256, 256)
            assert fast.dtype == torch.uint8
            assert torch.equal(uint8_to_model_pixels(fast), slow)


def test_quick_run_prints_pipeline_and_baseline_figures():
    quick_tiny = "--quick --heights 64 --durations 3 --fps 8 --repeats 1 --rounds 1".split()
    proc = helpers.run_command([helpers.PYTHON, str(BENCH), *quick_tiny], timeout=120)
    assert "at [0.1] bits per pixel" in proc.stdout  # the default bitrate, named in the header
    rows = [ROW.match(line) for line in proc.stdout.splitlines() if ROW.match(line)]
    assert [r.group(1) for r in rows] == ["comprehension", "generation"], proc.stdout
    for row in rows:
        pipeline_cps, pipeline_fps, baseline_cps, baseline_fps, ratio = map(float, row.groups()[5:])
        assert pipeline_cps > 0 and baseline_cps > 0
        assert abs(pipeline_fps - 5 * pipeline_cps) < 0.1
        assert abs(baseline_fps - 5 * baseline_cps) < 0.1
        assert abs(ratio - pipeline_cps / baseline_cps) < 0.06 * ratio + 0.05


def test_floor_report_times_full_and_reference_only_decoding():
    bench = helpers.load_tool("tools/bench/data.py")
    data = bench.make_video(height=64, duration_s=3, fps=8, seed=0)
    line = bench.floor_report("64p 3s", data, baseline_s=1.0, pipeline_s=0.5, rounds=1)
    match = re.fullmatch(
        r"64p 3s: baseline 1\.00 s \(decoding alone ([\d.]+) s; .*\), reference frames only ([\d.]+) s = "
        r"([\d.]+)x faster than the baseline, pipeline 0\.50 s",
        line,
    )
    assert match, line
    decode_all_s, floor_s, ratio = map(float, match.groups())
    assert decode_all_s >= 0 and floor_s >= 0 and ratio > 0


def test_bpp_sets_the_bitrate_of_the_synthetic_videos():
    bench = helpers.load_tool("tools/bench/data.py")
    width = round(64 * 16 / 9 / 2) * 2
    # (bitrates a 64p video can have: at 0.1 bpp x264's coarsest quantiser still overshoots)
    for bpp in (0.3, 1.0):
        video = bench.bench_video(
            "v", "g", bench.make_video(height=64, duration_s=30, fps=8, seed=0, bpp=bpp)
        )
        assert video.duration_s == 30
        # x264's rate control keeps the average within a few percent (container overhead included)
        assert abs(video.bits_per_pixel - bpp) < 0.08 * bpp, video.bits_per_pixel
        assert abs(video.bits_per_pixel - 8 * len(video.data) / (240 * width * 64)) < 1e-12
    assert bench.make_video(64, 2, 8, seed=0) == bench.make_video(64, 2, 8, seed=0, bpp=bench.DEFAULT_BPP)


def test_a_sweep_judges_each_bitrate_on_its_30_s_videos(capsys):
    bench = helpers.load_tool("tools/bench/data.py")
    argv = "--heights 64 --durations 2 30 --fps 8 --repeats 1 --rounds 1 --all-cores --bpp 0.3 1".split()
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    rows = [ROW.match(line) for line in out.splitlines() if ROW.match(line)]
    assert [(r.group(1), r.group(2)) for r in rows] == [
        (task, f"64p {d}s") for _bpp in (0.3, 1) for d in (2, 30) for task in ("comprehension", "generation")
    ], out
    # each row's bits per pixel is its group's (a 2-s file carries relatively more container)
    for row, bpp in zip(rows, [0.3] * 4 + [1.0] * 4, strict=True):
        assert abs(float(row.group(4)) - bpp) < 0.15 * bpp, out
    verdicts = re.findall(r"^# (\w+), 30-s videos at ([\d.]+) bpp: pipeline/baseline >= ([\d.]+)x", out, re.M)
    assert [(task, bpp) for task, bpp, _ in verdicts] == [
        ("comprehension", "0.3"),
        ("generation", "0.3"),
        ("comprehension", "1"),
        ("generation", "1"),
    ]
    thirty = [r for r in rows if r.group(2) == "64p 30s"]  # only the 30-s rows are judged
    for (_task, _bpp, ratio), row in zip(verdicts, thirty, strict=True):
        assert float(ratio) == float(row.group(10))
    assert out.count("64p 30s at 0.3 bpp: baseline") == out.count("64p 30s at 1 bpp: baseline") == 1


def test_given_video_files_are_benchmarked_and_unreadable_ones_skipped(tmp_path, capsys):
    bench = helpers.load_tool("tools/bench/data.py")
    data = bench.make_video(height=64, duration_s=3, fps=8, seed=0)
    (tmp_path / "clip.mp4").write_bytes(data)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    files = [str(tmp_path / "clip.mp4"), str(tmp_path / "missing.mp4"), str(tmp_path / "junk.mp4")]
    # in-process and --all-cores so the test process is not pinned to one core
    assert bench.main(["--videos", *files, "--repeats", "1", "--rounds", "1", "--all-cores"]) == 0
    out = capsys.readouterr().out
    rows = [ROW.match(line) for line in out.splitlines() if ROW.match(line)]
    assert [(r.group(1), r.group(2)) for r in rows] == [
        ("comprehension", "clip.mp4"),
        ("generation", "clip.mp4"),
    ], out
    width = round(64 * 16 / 9 / 2) * 2
    expected_bpp = 8 * len(data) / (3 * 8 * width * 64)  # 24 frames of width x 64
    for row in rows:
        assert float(row.group(3)) == round(len(data) / 1e6, 2)
        assert abs(float(row.group(4)) - expected_bpp) < 1e-3
    windows = plan_windows(24, 8.0, bench.TASKS["comprehension"], np.random.default_rng(0), dense=False)
    assert int(rows[0].group(5)) == len(windows)  # clips per call, as the clip rules give them
    assert f"# skipped {tmp_path / 'missing.mp4'}" in out
    assert f"# skipped {tmp_path / 'junk.mp4'}" in out
    assert "# comprehension, given videos: pipeline/baseline" in out
    assert "target" not in out  # the 30-s synthetic target is not applied to given files


def test_each_clip_choice_counts_its_best_call_and_both_contenders_get_the_same_choices(monkeypatch):
    bench = helpers.load_tool("tools/bench/data.py")
    clock = [0.0]
    # seconds each call takes, in call order: choice 0 rounds 0-1, then choice 1 rounds 0-1
    durations = {"pipeline": [3.0, 1.0, 2.0, 5.0], "baseline": [10.0, 30.0, 20.0, 8.0]}
    draws: dict[str, list[float]] = {"pipeline": [], "baseline": []}

    def contender(name):
        def call(data, num_clips, rng):
            draws[name].append(rng.random())  # which clip choice it was given
            clock[0] += durations[name].pop(0)
            return torch.zeros(4, 5, 3, 8, 8)  # 4 clips

        return call

    monkeypatch.setattr(bench, "pipeline", contender("pipeline"))
    monkeypatch.setattr(bench, "baseline", contender("baseline"))
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    fast, slow = bench.measure(b"", num_clips=20, repeats=2, rounds=2, seed=0)
    assert (fast.seconds, fast.clips) == (1.0 + 2.0, 8)
    assert (slow.seconds, slow.clips) == (10.0 + 8.0, 8)
    assert draws["pipeline"] == draws["baseline"]  # same seeded choice, call for call
    assert draws["pipeline"][0] == draws["pipeline"][1] != draws["pipeline"][2] == draws["pipeline"][3]
