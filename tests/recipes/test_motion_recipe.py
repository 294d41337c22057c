"""`divot-data motion` and `divot-data inspect --motion` in-process: the clips printed,
and the PNG read back, whose flow row has the colour of the square's direction where it
moves (right: red, down: yellow) and white where nothing moves."""

from __future__ import annotations

import colorsys
import re

import numpy as np
import pytest
from PIL import Image

from data_recipes.__main__ import main
from divot_llm.data.motion_viz import GAP
from tests.data.motion_media import moving_square
from tests.data.test_sources import write_tar


def _flow_row_hues(png) -> tuple[np.ndarray, float]:
    """Hues (degrees) of the saturated pixels of the strip's flow row, and the white share."""
    strip = np.asarray(Image.open(png).convert("RGB")) / 255
    flow = strip[(strip.shape[0] + GAP) // 2 :].reshape(-1, 3)
    hsv = np.asarray([colorsys.rgb_to_hsv(*pixel) for pixel in flow[::7]])
    return hsv[hsv[:, 1] > 0.5, 0] * 360, float((hsv[:, 1] < 0.05).mean())


@pytest.mark.parametrize(("dx", "dy", "hue_range"), [(2, 0, (-10, 10)), (0, 1, (45, 65))])
def test_motion_png_shows_the_direction_as_its_hue(tmp_path, capsys, dx, dy, hue_range):
    video = tmp_path / "square.mp4"
    video.write_bytes(moving_square(dx, dy))
    png = tmp_path / "motion.png"
    assert main(["motion", str(video), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "24 frames at 6 fps (GOP 12), 1 clips of 24 frames, fields (2, 24, 20, 36) each" in out
    mean = float(re.search(r"clip 0: frames 0-23 \(from 0.00 s\), mean \|mv\| ([\d.]+)", out).group(1))
    assert mean > 0.1
    hues, white = _flow_row_hues(png)
    hues = np.where(hues > 180, hues - 360, hues)
    assert len(hues) > 500
    assert hue_range[0] < np.median(hues) < hue_range[1]
    assert white > 0.4  # the background does not move


def test_motion_reports_a_video_without_a_clip(tmp_path, capsys):
    video = tmp_path / "short.mp4"
    video.write_bytes(moving_square(1, 0, frames=20))
    assert main(["motion", str(video)]) == 1
    assert "no motion clips (no_motion_clip): 20 frames at 6 fps" in capsys.readouterr().out
    # shorter GOPs make a clip of it
    assert (
        main(
            [
                "motion",
                str(video),
                "--set",
                "data.motion.gop=6",
                "--clip",
                "5",
                "--png",
                str(tmp_path / "x.png"),
            ]
        )
        == 2
    )
    assert "error: --clip 5: the video has clips 0-0" in capsys.readouterr().out


def test_inspect_motion_reports_clips_and_draws_them(tmp_path, capsys):
    shard = write_tar(
        tmp_path / "shard-00000.tar",
        [
            ("moving.mp4", moving_square(2, 0)),
            ("moving.txt", b"a square moving right"),
            ("short.mp4", moving_square(1, 0, frames=12)),
            ("short.txt", b"too short for a clip"),
        ],
    )
    assert main(["inspect", str(shard), "--motion", "--png-dir", str(tmp_path / "pngs")]) == 0
    out = capsys.readouterr().out
    assert "motion: 2 videos (data.motion defaults)" in out
    assert re.search(r"shard-00000\.tar:moving: 1 clips, 24 frames\n\s+clip 0: frames 0-23", out)
    assert "shard-00000.tar:short: no motion clip (no_motion_clip): 12 frames" in out
    assert [p.name for p in (tmp_path / "pngs").iterdir()] == ["shard-00000_moving.png"]
