"""``tools/bench/train_step.py`` runs the real training step and prints its numbers (speed
is reported, never asserted: see tools/README.md)."""

from __future__ import annotations

import re

import pytest

from tests import helpers
from tests.train.conftest import run_env

pytestmark = pytest.mark.slow

BREAKDOWN_ROWS = (
    "bare step",
    "video tokenizer",
    "LoRA, projections",
    "DeepSpeed ZeRO-2 engine",
    "trainer bookkeeping",
)


def test_bench_prints_throughput_mfu_fair_ratio_and_breakdown(train_data):
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
    bare_ms = float(re.search(r"like-for-like bare step: ([\d.]+) ms", out).group(1))
    ratio = float(re.search(r"framework overhead: ([\d.]+)x the like-for-like bare step", out).group(1))

    # The breakdown's parts add up to the total, and the ratio is total / bare step.
    rows = {}
    for line in out.splitlines():
        row = re.match(r"\s+(.+?)\s+(-?[\d.]+)\s+(-?[\d.]+)%$", line)
        if row:
            rows[row.group(1)] = float(row.group(2))
    total = rows.pop("total: our train_step")
    assert len(rows) == len(BREAKDOWN_ROWS), out
    for prefix in BREAKDOWN_ROWS:
        assert any(name.startswith(prefix) for name in rows), (prefix, out)
    assert sum(rows.values()) == pytest.approx(total, abs=0.3), out  # one decimal per row
    assert rows["bare step (like-for-like)"] == bare_ms
    # the printed figures are rounded (ms to 0.1, the ratio to 0.01): allow for it
    rounding = total / bare_ms * (0.05 / bare_ms + 0.05 / total) + 0.005
    assert ratio == pytest.approx(total / bare_ms, abs=rounding + 1e-9), out
    assert bare_ms > 0 and rows["video tokenizer: frozen encode of the clips"] > 0, out


def test_balance_model_prints_busy_fractions_before_and_after(capsys):
    """The FLOP model of rank balance (tools/bench/balance.py) on the demo mix: a step
    that draws one source for all ranks keeps them busier than independent draws."""
    balance = helpers.load_tool("tools/bench/balance.py")
    assert balance.main("--experiment demo --steps 40 --pool 100 --ranks 8 64".split()) == 0
    out = capsys.readouterr().out
    modes = len(balance.MODES)
    rows = re.findall(rf"^\s+(\d+)\s+((?:[\d.]+% \([\d.]+\)\s+){{{modes}}})([\d.]+)x$", out, re.M)
    assert [int(r[0]) for r in rows] == [8, 64], out
    for _, cells, gain in rows:
        busy = [float(b) / 100 for b in re.findall(r"([\d.]+)%", cells)]
        assert len(busy) == modes, out
        before, same_source, after = busy[0], busy[1], busy[-1]  # after: as configured
        assert all(0 < b <= 1 for b in busy), out
        assert after > before and same_source > before, out
        assert float(gain) == pytest.approx(after / before, abs=0.01), out
