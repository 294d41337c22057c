"""tools/bench/data.py: the baseline and the exact floor load the same pixels as the
pipeline, the floor reads only the groups of pictures it needs, the timing keeps each
contender's best call, the verdicts and the exit status follow the measured figures, the
mix weighs its sources as the reference does, and a quick run prints every part. Speed
itself is never asserted."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
import torch

from divot_llm.data.clip_sampling import plan_windows, uint8_to_model_pixels
from divot_llm.data.video_codec import encode_video
from tests import helpers

BENCH = helpers.REPO_ROOT / "tools" / "bench" / "data.py"
ROW = re.compile(
    r"^(comprehension|generation) +(\S+(?: \S+)?) +([\d.]+) +([\d.]+) +(\d+) \| +([\d.]+) +([\d.]+) \| "
    r"+([\d.]+) +([\d.]+) \| +([\d.]+)x \| +([\d.]+) +([\d.]+)x"
)
VERDICT = re.compile(r"^(PASS|FAIL|SKIPPED): (generation|comprehension|pretraining mix) [^:]*: (.*)$", re.M)


@pytest.fixture(scope="module")
def bench():
    return helpers.load_tool("tools/bench/data.py")


def sibling(name: str):
    """A module beside data.py (on sys.path once the ``bench`` fixture loaded data.py)."""
    return importlib.import_module(name)


def rows_of(out: str) -> list[re.Match]:
    return [m for m in map(ROW.match, out.splitlines()) if m]


@pytest.mark.timeout(60)
def test_baseline_and_floor_load_the_pipelines_clips(bench):
    floor = sibling("data_floor")
    # 12 s: consecutive 2-s clips; 41 s: one clip per segment (the pipeline seeks, the floor
    # reads two groups of pictures)
    for duration_s, comprehension_clips in ((12, 6), (41, 20)):
        data = bench.make_video(height=64, duration_s=duration_s, fps=8, seed=0)
        layout = floor.video_layout(data)
        for num_clips in bench.TASKS.values():
            fast = bench.pipeline(data, num_clips, np.random.default_rng(1))
            slow = bench.baseline(data, num_clips, np.random.default_rng(1))
            least = floor.exact_floor_clips(data, layout, num_clips, np.random.default_rng(1))
            assert fast.shape[0] == min(num_clips, comprehension_clips)
            assert fast.shape == slow.shape and fast.shape[1:] == (5, 3, 256, 256)
            assert fast.dtype == least.dtype == torch.uint8
            assert torch.equal(uint8_to_model_pixels(fast), slow)
            assert torch.equal(least, fast)


@pytest.mark.timeout(60)
def test_the_floor_picks_the_nearest_frame_of_a_variable_frame_rate_video(bench):
    floor = sibling("data_floor")
    frames = bench.TexturedFrames(100, 64, 112, seed=0)
    times = np.cumsum(np.r_[0, np.tile([0.05, 0.2], 50)[:99]])  # 20 fps and 5 fps alternating
    data = encode_video(frames, 8, "h264", timestamps_s=times)
    layout = floor.video_layout(data)
    np.testing.assert_allclose(layout.frame_times, times, atol=1e-3)
    for num_clips in bench.TASKS.values():
        for seed in range(3):
            fast = bench.pipeline(data, num_clips, np.random.default_rng(seed))
            least = floor.exact_floor_clips(data, layout, num_clips, np.random.default_rng(seed))
            assert torch.equal(least, fast)
    # ties go to the earlier frame, times past either end to the end frames
    index = floor.nearest_frames(np.array([0.0, 1.0, 2.0]), np.array([-1.0, 0.5, 0.51, 1.0, 9.0]))
    assert index.tolist() == [0, 0, 1, 1, 2]


@pytest.mark.timeout(60)
def test_the_floor_reads_only_the_groups_of_pictures_holding_chosen_frames(bench):
    floor = sibling("data_floor")
    data = bench.make_video(height=64, duration_s=70, fps=8, seed=0)  # keyframes every 250 frames
    layout = floor.video_layout(data)
    keys = layout.keyframe_positions
    assert len(keys) >= 3 and keys[0] == 0
    by_position = {position: pts for pts, position in layout.decode_position.items()}

    def runs(*positions):
        return [(r.first, r.last) for r in floor.decode_runs(layout, {by_position[p] for p in positions})]

    assert runs(3, 10) == [(0, 10)]  # stops at the last chosen packet
    assert runs(keys[1] + 2) == [(keys[1], keys[1] + 2)]  # seeks past the first group
    assert runs(5, keys[1] + 1) == [(0, keys[1] + 1)]  # neighbouring groups: one pass
    assert runs(5, keys[2] + 1) == [(0, 5), (keys[2], keys[2] + 1)]  # a group between: skipped
    chosen = {by_position[5], by_position[keys[2] + 1]}
    assert set(floor.decode_chosen(data, layout, chosen)) == chosen


@pytest.mark.timeout(30)
def test_each_contender_keeps_its_best_call_and_the_baseline_its_best_per_clip(bench, monkeypatch):
    clock = [0.0]
    # per contender, call by call (choice 0 round 0, choice 0 round 1, choice 1 ...): the
    # seconds it takes and the clips it delivers; every contender gets as many calls
    durations = {"pipeline": [3.0, 1.0, 2.0, 5.0], "floor": [4.0, 2.0, 2.5, 1.5], "baseline": [30.0, 10.0, 40.0, 18.0]}
    clips = {"pipeline": [4, 4, 6, 6], "floor": [4, 4, 6, 6], "baseline": [4, 4, 6, 6]}
    draws: dict[str, list[float]] = {name: [] for name in durations}

    def contender(name):
        def call(*args, **kwargs):
            rng = next(a for a in args if isinstance(a, np.random.Generator))
            draws[name].append(rng.random())  # which clip choice it was given
            clock[0] += durations[name].pop(0)
            return torch.zeros(clips[name].pop(0))

        return call

    monkeypatch.setattr(bench, "pipeline", contender("pipeline"))
    monkeypatch.setattr(bench, "baseline", contender("baseline"))
    monkeypatch.setattr(bench, "exact_floor_clips", contender("floor"))
    timings = bench.measure(b"", 20, repeats=2, rounds=2, seed=0, layout=object(), clock=lambda: clock[0])
    assert (timings["pipeline"].seconds, timings["pipeline"].clips) == (1.0 + 2.0, 10)
    assert (timings["floor"].seconds, timings["floor"].clips) == (2.0 + 1.5, 10)
    # the baseline's best per clip (choice 0's second call: 10 s / 4 clips) times all the clips
    assert (timings["baseline"].seconds, timings["baseline"].clips) == (2.5 * 10, 10)
    assert draws["pipeline"] == draws["floor"] == draws["baseline"]  # the same choice, call for call
    assert draws["pipeline"][0] == draws["pipeline"][1] != draws["pipeline"][2] == draws["pipeline"][3]


@pytest.mark.timeout(30)
def test_a_row_over_the_floor_margin_is_retimed_and_its_best_calls_count(bench, monkeypatch):
    timing = bench.Timing
    scripted = [
        [{"pipeline": timing(1.30, 15), "floor": timing(1.0, 15), "baseline": timing(9.0, 15)}],
        [{"pipeline": timing(1.05, 15), "floor": timing(1.1, 15), "baseline": timing(8.0, 15)}],
    ]
    monkeypatch.setattr(bench, "first_calls", lambda *args: object())
    monkeypatch.setattr(bench, "time_choices", lambda *args, **kwargs: scripted.pop(0))
    args = bench.parse_args(["--repeats", "1"])
    args.clock = None
    video = bench.BenchVideo("256p 30s", "0.1 bpp", b"", 30.0, 0.1)
    row = bench.measured_row(video, "comprehension", 20, args)
    assert row.retimed == 1 and not scripted
    assert row.timings["pipeline"].seconds == 1.05 and row.timings["floor"].seconds == 1.0
    assert row.timings["baseline"].seconds == 8.0  # retimed too: every ratio compares as many calls
    assert row.floor_ratio == pytest.approx(1.05)


@pytest.mark.timeout(30)
def test_verdicts_compare_against_thresholds_from_the_same_run(bench):
    timing = bench.Timing

    def row(task, pipeline_s, baseline_s, floor_s, label="480p 30s", duration_s=30.0):
        video = bench.BenchVideo(label, "0.1 bpp", b"", duration_s, 0.1)
        clips = 15 if task == "comprehension" else 1
        timings = {"pipeline": timing(pipeline_s, clips), "baseline": timing(baseline_s, clips)}
        timings["floor"] = timing(floor_s, clips)
        return bench.Row(task, video, timings, repeats=1)

    generation = bench.judge_generation(
        [row("generation", 1.0, 3.1, 1.0), row("generation", 1.0, 9.0, 1.0, "256p 30s")]
    )
    assert generation.passed and generation.line.startswith(
        "PASS: generation >= 3x the naive loader: worst 480p 30s"
    )
    assert bench.judge_generation([row("generation", 1.0, 2.99, 1.0)]).passed is False
    assert bench.judge_generation([row("generation", 1.0, 1.0, 1.0, duration_s=10.0)]).passed is None
    comprehension = bench.judge_comprehension([row("comprehension", 1.09, 5.0, 1.0)])
    assert comprehension.passed and "1.090 s vs 1.1 x 1.000 s = 1.100 s (+9.0%" in comprehension.line
    failed = bench.judge_comprehension(
        [row("comprehension", 1.0, 5.0, 1.0), row("comprehension", 1.2, 5.0, 1.0, "256p 30s")]
    )
    assert failed.passed is False and failed.line.startswith(
        "FAIL: comprehension within 10% of the exact floor: worst 256p 30s"
    )
    assert bench.judge_mix(None).passed is None

    def mix(ours_s, naive_s):
        cost = sys.modules["data_mix"].SourceCost("webvid_gen", 1.0, 32, "video", ours_s, naive_s, 1.0)
        return bench.MixResult([cost])

    assert bench.judge_mix(mix(0.1, 0.31)).passed is True
    failed_mix = bench.judge_mix(mix(0.1, 0.29))
    assert failed_mix.passed is False and failed_mix.line.startswith("FAIL: pretraining mix >= 3x")


@pytest.mark.timeout(30)
def test_the_mix_weighs_sources_by_batch_probability_and_batch_size(bench):
    mix = sibling("data_mix")
    data = mix.reference_data_config(helpers.REPO_ROOT)
    costs = [
        mix.SourceCost(name, src.weight, src.batch_size, "", ours_s=0.1 * (i + 1), naive_s=1.0, clips=1.0)
        for i, (name, src) in enumerate(data.sources.items())
    ]
    result = mix.MixResult(costs)
    probabilities = [round(result.batch_probability(c), 3) for c in costs]
    assert probabilities == [0.448, 0.345, 0.103, 0.103]  # divot-reference §7.6
    assert [c.batch_size for c in costs] == [8, 32, 32, 32]
    shares = np.array([result.sample_share(c) for c in costs])
    expected = np.array([1.3 * 8, 1.0 * 32, 0.3 * 32, 0.3 * 32])
    np.testing.assert_allclose(shares, expected / expected.sum())
    assert result.ours_s == pytest.approx(float(shares @ [0.1, 0.2, 0.3, 0.4]))
    assert result.naive_s == pytest.approx(1.0)
    durations = mix.webvid_durations(4)
    assert durations == sorted(durations) and durations[1] < 15.0 < durations[2]  # around the median


@pytest.mark.timeout(30)
def test_the_shard_server_serves_on_loopback(bench, tmp_path):
    stream = sibling("data_stream")
    shard = stream.write_shard(tmp_path, [b"not really a video", b"nor this"])
    with stream.serve(tmp_path) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base_url}/{shard.name}", timeout=10) as response:
            assert response.read() == shard.read_bytes()


@pytest.mark.timeout(120)
def test_a_quick_run_prints_every_part_and_its_exit_status_follows_the_verdicts():
    tiny = (
        "--quick --heights 64 --durations 3 --fps 8 --repeats 1 --rounds 1 --mix-samples 1 --mix-height 112"
    )
    proc = subprocess.run(
        [helpers.PYTHON, str(BENCH), *tiny.split()],
        env=helpers.cpu_distributed_env(),
        capture_output=True,
        text=True,
        timeout=110,
    )
    out = proc.stdout
    assert "at [0.1] bits per pixel" in out, (
        proc.stderr
    )  # the default bitrate of --quick, named in the header
    assert "pinned to one core, CPU time" in out and "load average" in out
    rows = rows_of(out)
    assert [r.group(1) for r in rows] == ["comprehension", "generation"], out
    for row in rows:
        pipeline_cps, pipeline_fps, baseline_cps, baseline_fps, ratio, floor_cps, vs_floor = map(
            float, row.groups()[5:]
        )
        assert pipeline_cps > 0 and baseline_cps > 0 and floor_cps > 0
        assert abs(pipeline_fps - 5 * pipeline_cps) < 0.1
        assert abs(baseline_fps - 5 * baseline_cps) < 0.1
        assert abs(ratio - pipeline_cps / baseline_cps) < 0.06 * ratio + 0.05
        assert abs(vs_floor - floor_cps / pipeline_cps) < 0.01 * vs_floor + 0.002
    sources = re.findall(r"^(webvid_comp|webvid_gen|cc3m_comp|journeydb_gen|mix) .*\| +([\d.]+)x$", out, re.M)
    assert [name for name, _ in sources] == [
        "webvid_comp",
        "webvid_gen",
        "cc3m_comp",
        "journeydb_gen",
        "mix",
    ], out
    assert re.search(
        r"^# streamed shard \(loopback HTTP\) [\d.]+ clips/s vs local shard [\d.]+ clips/s", out, re.M
    ), out
    verdicts = VERDICT.findall(out)
    assert [(word, what) for word, what, _ in verdicts][:2] == [
        ("SKIPPED", "generation"),  # no 30-s video in this run
        ("SKIPPED", "comprehension"),
    ], out
    assert verdicts[2][1] == "pretraining mix" and verdicts[2][0] in ("PASS", "FAIL")
    assert proc.returncode == (1 if verdicts[2][0] == "FAIL" else 0), proc.stderr


def test_bpp_sets_the_bitrate_of_the_synthetic_videos(bench):
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


@pytest.mark.timeout(120)
def test_a_sweep_judges_each_bitrate_on_its_30_s_videos(bench, capsys):
    # (the quick run above shows that videos of other lengths are not judged)
    argv = "--heights 64 --fps 8 --repeats 1 --rounds 1 --all-cores --bpp 0.3 1 --mix-samples 0"
    status = bench.main(argv.split())
    out = capsys.readouterr().out
    assert "all cores, wall-clock time" in out
    rows = rows_of(out)
    assert [(r.group(1), r.group(2)) for r in rows] == [
        (task, "64p 30s") for _bpp in (0.3, 1) for task in ("comprehension", "generation")
    ], out
    for row, bpp in zip(rows, [0.3, 0.3, 1.0, 1.0], strict=True):  # each row's bits per pixel is its group's
        assert abs(float(row.group(4)) - bpp) < 0.15 * bpp, out
    ranges = re.findall(
        r"^# (\w+), 30-s videos at ([\d.]+) bpp: pipeline/baseline ([\d.]+)x to ([\d.]+)x; "
        r"pipeline time / exact floor ([\d.]+) to ([\d.]+)$",
        out,
        re.M,
    )
    assert [(task, bpp) for task, bpp, *_ in ranges] == [
        ("comprehension", "0.3"),
        ("generation", "0.3"),
        ("comprehension", "1"),
        ("generation", "1"),
    ]
    for (_task, _bpp, low, high, floor_low, floor_high), row in zip(ranges, rows, strict=True):
        assert float(low) == float(high) == float(row.group(10))
        assert float(floor_low) == float(floor_high) == float(row.group(12))
    verdicts = VERDICT.findall(out)
    assert [what for _, what, _ in verdicts] == ["generation", "comprehension", "pretraining mix"], out
    assert verdicts[2][0] == "SKIPPED"
    worst_generation = min(float(r.group(10)) for r in rows if r.group(1) == "generation")
    assert verdicts[0][0] == ("PASS" if worst_generation >= 3 else "FAIL")
    assert f"({worst_generation:.1f}x; 30-s videos, 64p at 0.3 bpp, 1 bpp)" in verdicts[0][2]
    worst_floor = max(float(r.group(12)) for r in rows if r.group(1) == "comprehension")
    if abs(worst_floor - 1.1) > 0.001:  # (the column is rounded)
        assert verdicts[1][0] == ("PASS" if worst_floor < 1.1 else "FAIL")
    assert status == (1 if any(word == "FAIL" for word, _, _ in verdicts) else 0)


@pytest.mark.timeout(60)
def test_given_video_files_are_benchmarked_and_unreadable_ones_skipped(bench, tmp_path, capsys):
    data = bench.make_video(height=64, duration_s=3, fps=8, seed=0)
    (tmp_path / "clip.mp4").write_bytes(data)
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all")
    files = [str(tmp_path / "clip.mp4"), str(tmp_path / "missing.mp4"), str(tmp_path / "junk.mp4")]
    # in-process and --all-cores so the test process is not pinned to one core
    assert bench.main(["--videos", *files, "--repeats", "1", "--rounds", "1", "--all-cores"]) == 0
    out = capsys.readouterr().out
    rows = rows_of(out)
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
    # given files are not judged, and no mix or streamed shard is run for them
    assert [word for word, _, _ in VERDICT.findall(out)] == ["SKIPPED"] * 3
    assert "pretraining mix (conf" not in out and "streamed shard" not in out
