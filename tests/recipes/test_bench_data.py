"""tools/bench/data.py: the baseline loads the same pixels as the pipeline, and a quick
run prints both throughputs. Speed itself is never asserted."""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import torch

from divot_llm.data.video import uint8_to_model_pixels
from tests import helpers

BENCH = helpers.REPO_ROOT / "tools" / "bench" / "data.py"
ROW = re.compile(
    r"^(comprehension|generation) +(\S+ \S+) +[\d.]+ +(\d+) \| +([\d.]+) +([\d.]+) \| +([\d.]+) +([\d.]+) \| +([\d.]+)x$"
)


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_data", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_baseline_and_pipeline_load_identical_clips():
    bench = _load_bench()
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
    quick_tiny = "--quick --heights 64 --durations 3 --fps 8 --repeats 1".split()
    proc = helpers.run_command([helpers.PYTHON, str(BENCH), *quick_tiny], timeout=120)
    assert "grain +-24" in proc.stdout  # the default noise, named in the header
    rows = [ROW.match(line) for line in proc.stdout.splitlines() if ROW.match(line)]
    assert [r.group(1) for r in rows] == ["comprehension", "generation"], proc.stdout
    for row in rows:
        pipeline_cps, pipeline_fps, baseline_cps, baseline_fps, ratio = map(float, row.groups()[3:])
        assert pipeline_cps > 0 and baseline_cps > 0
        assert abs(pipeline_fps - 5 * pipeline_cps) < 0.1
        assert abs(baseline_fps - 5 * baseline_cps) < 0.1
        assert abs(ratio - pipeline_cps / baseline_cps) < 0.06 * ratio + 0.05


def test_floor_report_times_full_and_reference_only_decoding():
    bench = _load_bench()
    data = bench.make_video(height=64, duration_s=3, fps=8, seed=0)
    line = bench.floor_report("64p 3s", data, baseline_s=1.0, pipeline_s=0.5, repeats=1)
    match = re.fullmatch(
        r"64p 3s: baseline 1\.00 s \(decoding alone ([\d.]+) s; .*\), reference frames only ([\d.]+) s = "
        r"([\d.]+)x faster than the baseline, pipeline 0\.50 s",
        line,
    )
    assert match, line
    decode_all_s, floor_s, ratio = map(float, match.groups())
    assert decode_all_s >= 0 and floor_s >= 0 and ratio > 0


def test_grain_sets_the_noise_and_so_the_bitrate():
    bench = _load_bench()
    noisy = bench.make_video(height=64, duration_s=2, fps=8, seed=0)  # default grain 24
    assert bench.make_video(height=64, duration_s=2, fps=8, seed=0, grain=24) == noisy
    assert len(bench.make_video(height=64, duration_s=2, fps=8, seed=0, grain=0)) < 0.5 * len(noisy)
