"""The README demo, end to end: pretrain -> merge (from the ZeRO checkpoint) -> SFT-comp and SFT-gen
from the merged pretrain -> merge -> the VDM de-tokenizer -> export -> comprehend + generate
videos, and it really learns: the SFT-comp release names the shape colour of held-out videos,
and the videos generated for held-out captions show the caption's background colour, more
often than chance."""

from __future__ import annotations

import json
import math

import pytest

from divot_llm.data.synthetic import COLORS
from tests import helpers
from tests.train.conftest import run_env


@pytest.mark.slow
@pytest.mark.longest
@pytest.mark.timeout(1200)  # the whole README demo: ~7.5 min on 2 cores, ~10 beside the other tests
def test_demo_runs_end_to_end_and_learns(tmp_path):
    data, out = tmp_path / "data", tmp_path / "demo"
    proc = helpers.run_command(
        ["bash", "launch/demo.sh"], cwd=helpers.REPO_ROOT, timeout=900,
        DEMO_DATA=str(data), DEMO_OUT=str(out), **run_env(),
    )  # fmt: skip
    assert "Demo report" in proc.stdout
    report = json.loads((out / "report.json").read_text())

    for stage in ("pretrain", "sft_comp", "sft_gen"):  # the LLM stages: merged releases
        assert (out / "releases" / stage / "release.json").is_file(), stage
        assert json.loads((out / "releases" / stage / "release.json").read_text())["verified"]
        first, last = report["stages"][stage]["train_loss"]
        assert last < first, (stage, first, last)
    pre_val = report["stages"]["pretrain"]["val_lm_loss"]
    assert pre_val[1] < 0.5 * pre_val[0]

    detok = report["stages"]["detok"]
    assert detok["val_loss"][1] < detok["val_loss"][0] and detok["val_psnr"][1] > detok["val_psnr"][0]
    # held-out reconstructions beat filling every clip with the clips' mean colour
    assert detok["val_psnr"][1] > detok["val_psnr_mean_colour"][1], detok
    assert (out / "releases" / "detok" / "detokenizer").is_dir()

    comp = report["comprehension"]
    assert comp["videos"] >= 20 and comp["chance"] == pytest.approx(1 / len(COLORS))
    assert binomial_p_value(comp["correct"], comp["videos"], comp["chance"]) < 1e-3, comp

    gen = report["generation"]  # one mp4 + strip per held-out caption, read back for colours
    assert gen["videos"] == comp["videos"]
    assert len(list((out / "generation").glob("*.mp4"))) == len(
        list((out / "generation").glob("*_strip.png"))
    )
    assert binomial_p_value(gen["background"], gen["videos"], gen["chance"]) < 1e-3, gen
    assert (out / "generation" / "overview.png").is_file()


def binomial_p_value(hits: int, trials: int, chance: float) -> float:
    """One-sided binomial test against guessing a colour uniformly: P(X >= hits)."""
    return sum(
        math.comb(trials, k) * chance**k * (1 - chance) ** (trials - k) for k in range(hits, trials + 1)
    )
