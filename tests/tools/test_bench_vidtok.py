"""``tools/bench/vidtok.py`` runs on the tiny config and prints both rows with numbers that
agree with each other. Speed is reported, never asserted (tools/README.md); VidTok's code is
not needed (no ``--upstream``)."""

from __future__ import annotations

import re

from tests import helpers


def test_tiny_run_prints_encode_and_decode_throughput(capsys):
    script = helpers.load_tool("tools/bench/vidtok.py")
    assert script.main(["--configs", "vidtok_tiny", "--repeats", "1", "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^vidtok bench: .* VidTok: not run$", out, flags=re.M), out
    assert re.search(r"^config vidtok_tiny: 1 x 17 x 32x32, kl, causal, [\d,]+ parameters$", out, flags=re.M)
    for label in ("encode", "decode"):
        match = re.search(rf"^  {label}\s+ours\s+([\d.]+) frames/s \(\s*([\d.]+) ms\)$", out, flags=re.M)
        assert match, out
        frames_per_s, ms = float(match.group(1)), float(match.group(2))
        assert abs(frames_per_s - 17 / (ms / 1e3)) <= 0.01 * frames_per_s + 0.1, out
    assert "ours/VidTok" not in out
