"""The flow colour wheel (divot_llm/data/motion_viz.py): each direction its colour, the
length its saturation; the strip's layout."""

from __future__ import annotations

import colorsys

import numpy as np
import torch

from divot_llm.data.motion_viz import GAP, flow_to_rgb, motion_strip


def _hue_deg(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb) / 255))[0] * 360


def test_directions_get_the_colour_wheel_hues_and_length_the_saturation():
    directions = {"right": (1, 0), "down": (0, 1), "left": (-1, 0), "up": (0, -1)}
    field = torch.tensor(
        [
            [[*[d[0] for d in directions.values()], 0.0, 0.5]],
            [[*[d[1] for d in directions.values()], 0.0, 0.0]],
        ]
    )
    rgb = flow_to_rgb(field)[0]  # (6, 3): the four directions, rest, half right
    hues = dict(zip(directions, (_hue_deg(c) for c in rgb[:4]), strict=True))
    assert min(hues["right"], 360 - hues["right"]) < 5  # red
    assert 45 < hues["down"] < 65  # yellow
    assert 170 < hues["left"] < 200  # cyan
    assert 235 < hues["up"] < 275  # blue-violet
    assert rgb[4].tolist() == [255, 255, 255]  # no motion: white
    assert rgb[0].tolist() == [255, 0, 0] and rgb[5].tolist() == [
        255,
        128,
        128,
    ]  # half length: half saturation
    assert (flow_to_rgb(field, max_magnitude=2.0)[0, 0] == rgb[5]).all()


def test_strip_puts_the_frames_above_their_flow_colours():
    field = torch.zeros(2, 24, 20, 36)
    field[0, 5] = 1.0  # frame 5 moves right
    frames = np.zeros((24, 40, 72, 3), dtype=np.uint8)
    frames[:, :, :, 2] = 200  # blue frames
    strip = np.asarray(motion_strip(field, frames, max_frames=12))
    tile_h, tile_w = 20 * 4, 36 * 4  # upsampled to at least 144 px wide
    assert strip.shape == (2 * tile_h + GAP, 12 * tile_w + 11 * GAP, 3)
    assert (strip[:tile_h, :tile_w] == [0, 0, 200]).all()  # a frame on top
    # 12 of 24 shown (0, 2, 4, 6, ...): frame 5 is not one of them, so nothing is red
    assert not (strip[tile_h + GAP :] == [255, 0, 0]).all(-1).any()
    full = np.asarray(motion_strip(field, None, max_frames=24))
    column = 5 * (tile_w + GAP)
    assert full.shape[0] == tile_h and (full[:, column : column + tile_w] == [255, 0, 0]).all()
    assert (full[:, :tile_w] == 255).all()
