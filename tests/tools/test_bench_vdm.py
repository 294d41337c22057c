"""``tools/bench/vdm.py`` runs its quick mode on the tiny config and prints every row with
numbers. Speed is reported, never asserted (tools/README.md); the seed package is not
needed (``--no-seed``)."""

from __future__ import annotations

import re

import pytest

from tests import helpers

pytestmark = pytest.mark.slow  # seconds: diffusers' import and a few tiny-model steps

MS = r"\s+ours\s+([\d.]+) ms$"


def test_quick_mode_prints_train_ancestral_and_ddim_times(capsys):
    script = helpers.load_tool("tools/bench/vdm.py")
    assert script.main(["--quick", "--no-seed", "--configs", "tiny", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^vdm bench: .* seed: not run$", out, flags=re.M), out
    assert re.search(r"^config tiny: .* 8 timesteps, batch 1, [\d,]+ parameters", out, flags=re.M), out
    rows = {
        label: float(re.search(rf"^  {re.escape(label)}.*?{MS}", out, flags=re.M).group(1))
        for label in (
            "train step (forward + backward + Adam)",
            "ancestral step (best of 2-step loops)",
            "ancestral 8 steps (extrapolated from 2 timed steps)",
            "DDIM step (best of 4-step loops, ours)",
            "DDIM 4 steps (ours; the seed has none)",
        )
    }
    assert all(ms > 0 for ms in rows.values()), out
    # the extrapolation is the per-step time times the step count (one decimal each)
    per_step = rows["ancestral step (best of 2-step loops)"]
    assert abs(rows["ancestral 8 steps (extrapolated from 2 timed steps)"] - 8 * per_step) <= 0.5, out
    speedup = float(re.search(r"DDIM 4 steps vs our ancestral 8 steps: ([\d.]+)x faster", out).group(1))
    ddim_ms = rows["DDIM 4 steps (ours; the seed has none)"]
    assert abs(speedup - 8 * per_step / ddim_ms) <= 0.06, out
    assert (
        abs(
            rows["DDIM 4 steps (ours; the seed has none)"]
            - 4 * rows["DDIM step (best of 4-step loops, ours)"]
        )
        <= 0.3
    )
    assert "ours/seed" not in out
