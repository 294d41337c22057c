"""``divot-infer t2v`` refusals, before any model is loaded (the whole path, from a
trained stage=t2v run's export to a decoded gif and mp4, is in tests/train/test_t2v.py)."""

from __future__ import annotations

from divot_llm.cli.infer import main as infer_main
from tests.helpers import run_main


def test_t2v_refuses_a_folder_that_is_no_t2v_export_and_other_suffixes(tmp_path, capsys):
    (tmp_path / "detokenizer").mkdir()  # a de-tokenizer export of another stage: no config.yaml
    code, _, err = run_main(infer_main, "t2v", "a red circle", "--release", str(tmp_path),
                            "--out", str(tmp_path / "x.gif"), capsys=capsys, check=False)  # fmt: skip
    assert code == 2 and f"{tmp_path} is not a t2v export (it needs config.yaml and detokenizer/)" in err
    code, _, err = run_main(infer_main, "t2v", "a red circle", "--release", str(tmp_path),
                            "--out", str(tmp_path / "x.avi"), capsys=capsys, check=False)  # fmt: skip
    assert code == 2 and "--out must end in .mp4 or .gif, got" in err
    assert not list(tmp_path.glob("x*"))
