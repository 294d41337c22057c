"""``tools/bench/train_step.py`` runs the real training step and prints its numbers (speed
is reported, never asserted: see tools/README.md)."""

from __future__ import annotations

import re

import pytest

from tests import helpers
from tests.train.conftest import run_env

pytestmark = pytest.mark.slow


def test_bench_prints_throughput_mfu_and_overhead_ratio(train_data):
    proc = helpers.run_command(
        [
            helpers.PYTHON,
            "tools/bench/train_step.py",
            "--steps",
            "3",
            "--warmup",
            "1",
            f"data.root={train_data}",
        ],
        cwd=helpers.REPO_ROOT,
        timeout=300,
        **run_env(),  # a fresh MASTER_PORT: pytest's own process group holds the inherited one
    )
    out = proc.stdout
    assert re.search(r"tokens/s: [\d,]+\s+samples/s: [\d.,]+", out), out
    assert re.search(r"MFU: [\d.]+% of .*measured CPU fp32 GEMM", out), out
    ratio = re.search(r"framework overhead: ([\d.]+)x the bare step", out)
    assert ratio and float(ratio.group(1)) > 0, out
