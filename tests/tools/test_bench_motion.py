"""``tools/bench/motion.py`` runs on a tiny, short video and prints one row whose clips/s
agrees with its own timings. Speed is reported, never asserted (tools/README.md)."""

from __future__ import annotations

import re

from tests import helpers


def test_tiny_run_prints_the_stages_and_clips_per_second(capsys):
    script = helpers.load_tool("tools/bench/motion.py")
    assert script.main(["--sizes", "64", "--seconds", "4", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"^motion bench: one worker, 1 decoder thread; MPEG-4 at 6 fps, GOP 12, 8 Mb/s", out, re.M
    )
    row = re.search(
        r"^114x64 4 s: [\d.]+ MB in, 24 frames at 6 fps, 1 clips \| re-encode\s+([\d.]+) s \| "
        r"MV decode\s+([\d.]+) s \| clips\s+([\d.]+) s \|\s+([\d.]+) clips/s",
        out,
        re.M,
    )
    assert row, out
    reencode, decode, clips, rate = (float(g) for g in row.groups())
    total = reencode + decode + clips
    # the rate is of the unrounded times: each printed time is off by up to 0.0005 s
    assert abs(1 / rate - total) <= 0.05 / rate + 3 * 0.0005, out
