"""The README demo, end to end: pretrain -> merge (from the ZeRO checkpoint) -> SFT-comp and SFT-gen
from the merged pretrain -> merge -> comprehend + generate, and it really learns: the
SFT-comp release names the shape colour of held-out videos more often than chance."""

from __future__ import annotations

import json
import math

import pytest

from divot_llm.data.synthetic import COLORS
from tests import helpers
from tests.train.conftest import run_env


@pytest.mark.slow
@pytest.mark.longest
@pytest.mark.timeout(1200)  # the whole README demo: ~10 min on 2 cores, ~12 beside the other tests
def test_demo_runs_end_to_end_and_learns(tmp_path):
    data, out = tmp_path / "data", tmp_path / "demo"
    proc = helpers.run_command(
        ["bash", "launch/demo.sh"], cwd=helpers.REPO_ROOT, timeout=900,
        DEMO_DATA=str(data), DEMO_OUT=str(out), **run_env(),
    )  # fmt: skip
    assert "Demo report" in proc.stdout
    report = json.loads((out / "report.json").read_text())

    for stage in ("pretrain", "sft_comp", "sft_gen"):
        assert (out / "releases" / stage / "release.json").is_file(), stage
        assert json.loads((out / "releases" / stage / "release.json").read_text())["verified"]
        first, last = report["stages"][stage]["train_loss"]
        assert last < first, (stage, first, last)
    pre_val = report["stages"]["pretrain"]["val_lm_loss"]
    assert pre_val[1] < 0.5 * pre_val[0]
    assert list((out / "generation").glob("*.safetensors"))

    comp = report["comprehension"]
    assert comp["videos"] >= 20 and comp["chance"] == pytest.approx(1 / len(COLORS))
    # One-sided binomial test against guessing a colour uniformly: p < 0.001.
    p_value = sum(
        math.comb(comp["videos"], k) * comp["chance"] ** k * (1 - comp["chance"]) ** (comp["videos"] - k)
        for k in range(comp["correct"], comp["videos"] + 1)
    )
    assert p_value < 1e-3, comp
