"""divot-merge, divot-export and divot-infer refuse a bad argument before loading anything:
exit 2, one line naming the path or key and what is wrong, no traceback. The run folder and
the release are the real ones of the two-rank test run (tests/conftest.py)."""

from __future__ import annotations

import pytest

from divot_llm.cli.export import main as export_main
from divot_llm.cli.infer import main as infer_main
from divot_llm.cli.merge import main as merge_main
from tests.helpers import run_main

NOWHERE = "/nonexistent/divot-test"


def refused(main, *args: str, capsys) -> str:
    """The one stderr line of a command that must exit 2."""
    code, out, err = run_main(main, *args, capsys=capsys, check=False)
    assert code == 2, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


@pytest.mark.parametrize(
    "main, args, prefix, label",
    [
        (merge_main, ["--checkpoint", NOWHERE, "--out", "OUT"], "divot-merge", "--checkpoint"),
        (export_main, ["zero-to-fp32", NOWHERE, "OUT"], "divot-export", "CKPT"),
        (export_main, ["detokenizer", NOWHERE, "OUT"], "divot-export", "CKPT"),
        (infer_main, ["comprehend", "--release", NOWHERE, "clip.mp4"], "divot-infer", "--release"),
        (infer_main, ["generate", "--official", NOWHERE, "a cat"], "divot-infer", "--official"),
    ],
)
def test_a_missing_path_is_named_with_its_argument(main, args, prefix, label, tmp_path, capsys):
    args = [str(tmp_path / a) if a == "OUT" else a for a in args]
    assert refused(main, *args, capsys=capsys) == f"{prefix}: no such file or directory: {NOWHERE} ({label})"
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_run_folder_is_not_a_release(zero2_run, capsys):
    err = refused(infer_main, "comprehend", "--release", str(zero2_run), "clip.mp4", capsys=capsys)
    assert err == (
        f"divot-infer: {zero2_run} is a training run folder, not a release: make a release with "
        f"divot-merge --checkpoint {zero2_run} --out REL (--release)"
    )
    step = zero2_run / "checkpoints" / "step_00000030"
    err = refused(infer_main, "generate", "--release", str(step), "a cat", capsys=capsys)
    assert f"{step} is a training checkpoint, not a release" in err


def test_a_release_is_not_a_training_checkpoint(tiny_release, tmp_path, capsys):
    for main, args in (
        (merge_main, ["--checkpoint", str(tiny_release), "--out", str(tmp_path / "rel")]),
        (export_main, ["zero-to-fp32", str(tiny_release), str(tmp_path / "fp32")]),
    ):
        err = refused(main, *args, capsys=capsys)
        assert f"{tiny_release} is a release (divot-merge output), not a training checkpoint" in err
    assert not any(tmp_path.iterdir())


def test_merge_set_is_checked_against_the_schema_before_reading_weights(zero2_run, tmp_path, capsys):
    out = tmp_path / "rel"
    merge = ("--checkpoint", str(zero2_run), "--out", str(out))
    assert "Key 'rnak' not in 'LoraConfig'" in refused(
        merge_main, *merge, "--set", "model.lora.rnak=3", capsys=capsys
    )
    assert "model.lora.r=-4 must be >= 1" in refused(
        merge_main, *merge, "--set", "model.lora.r=-4", capsys=capsys
    )
    err = refused(merge_main, *merge, "--set", "model.llm.path=/moved/base", capsys=capsys)
    assert err == "divot-merge: no such file or directory: /moved/base (model.llm.path)"
    assert not out.exists()


def test_infer_set_is_checked_against_the_schema(tiny_release, capsys):
    release = ("comprehend", "--release", str(tiny_release), "clip.mp4")
    err = refused(infer_main, *release, "--set", "model.lora.rnak=3", capsys=capsys)
    assert "Key 'rnak' not in 'LoraConfig'" in err and "model.lora.rnak" in err
    err = refused(infer_main, *release, "--set", "model.gmm.sample_var_scale=-1", capsys=capsys)
    assert "model.gmm.sample_var_scale=-1.0 must be >= 0" in err
    err = refused(
        infer_main,
        "generate",
        "--release",
        str(tiny_release),
        "--detokenizer",
        NOWHERE,
        "a cat",
        capsys=capsys,
    )
    assert err == f"divot-infer: no such file or directory: {NOWHERE} (--detokenizer)"
