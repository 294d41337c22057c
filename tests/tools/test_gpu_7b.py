"""``tools/bench/gpu_7b.py`` (the 7B GPU check) runs end to end in its tiny CPU mode: every
case, from frames and from the feature cache it builds, prints its numbers and lands in
the JSON summary. Speed is reported, never asserted (tools/README.md)."""

from __future__ import annotations

import json
import re

import pytest

from tests import helpers

pytestmark = pytest.mark.slow

NUMBER = r"[\d.,]+"
CASE_LINE = re.compile(
    rf"^case (\w+)/(frames|cache): {NUMBER} x {NUMBER} tokens, {NUMBER} clips/sample \| step {NUMBER} ms \| "
    rf"tokens/s {NUMBER} \| MFU {NUMBER}% HFU {NUMBER}% \| padding {NUMBER}% \| peak RSS {NUMBER} GiB "
    rf"vs plan {NUMBER} GiB \| attention ([\w+]+) \| {NUMBER} s$",
    flags=re.M,
)


def test_tiny_mode_prints_every_case_with_numbers(ds_process_group, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    script = helpers.load_tool("tools/bench/gpu_7b.py")
    assert script.main(["--tiny", "--workdir", str(tmp_path / "work")]) == 0
    out = capsys.readouterr().out
    cases = {(m[1], m[2]): m[3] for m in CASE_LINE.finditer(out)}
    expected = {(c.name, f) for c in script.TINY_CASES for f in ("frames", "cache")}
    assert set(cases) == expected, out
    # the kernel the model reports: generation query blocks need the dense mask, the rest is causal
    assert {f: k for (case, f), k in cases.items() if case == "gen"} == dict.fromkeys(
        ("frames", "cache"), "sdpa+dense_mask"
    )
    assert {k for (case, _), k in cases.items() if case != "gen"} == {"sdpa_causal"}
    assert re.search(r"^feature cache: [1-9]\d* samples encoded", out, flags=re.M), out
    assert re.search(
        rf"^pretrain mix from frames \(webvid 1.3 : gen 1; no image sources\): MFU {NUMBER}%", out, flags=re.M
    ), out

    summary = json.loads((tmp_path / "gpu_7b.json").read_text())
    results = {(r["case"], r["features"]): r for r in summary["cases"]}
    assert set(results) == expected and all(r["status"] == "ok" for r in results.values())
    comp20 = results["comp20", "frames"]["numbers"]
    assert comp20["clips_per_sample"] == 4  # demo's video_comp: num_clips 4, and every sample gets them all
    assert results["gen", "cache"]["numbers"]["clips_per_sample"] == 1
    for r in results.values():
        n = r["numbers"]
        assert n["tokens_per_s"] > 0 and 0 < n["mfu"] <= n["hfu"] and 0 <= n["padding"] < 1
        assert n["plan_gib"] > 0 and n["peak_gib"] > 0
