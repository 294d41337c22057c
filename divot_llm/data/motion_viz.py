"""Pictures of motion fields: the optical-flow colour wheel and a strip of a clip's frames.

``flow_to_rgb`` uses the colour wheel of the Middlebury optical-flow benchmark (Baker et
al.), the usual way flow is drawn: the hue gives the direction (right red, down yellow,
left cyan, up blue-violet; image axes, y down), the saturation the magnitude (white = no
motion, full colour = ``max_magnitude``).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from PIL import Image

GAP = 2  # px between the strip's tiles
MIN_TILE_WIDTH = 144  # px: fields are upsampled (nearest) to at least this wide
FULL_COLOUR_QUANTILE = 0.98  # of a strip's non-zero vector lengths: drawn at full colour


@functools.cache
def colour_wheel() -> np.ndarray:
    """(55, 3) float RGB in [0, 1]: red -> yellow -> green -> cyan -> blue -> magenta -> red,
    the six segments as long as the Middlebury wheel makes them (15, 6, 4, 11, 13, 6)."""
    ramps = []
    corners = [(1, 0, 0), (1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 0, 1), (1, 0, 1), (1, 0, 0)]
    for length, start, end in zip((15, 6, 4, 11, 13, 6), corners, corners[1:], strict=False):
        steps = np.arange(length)[:, None] / length
        ramps.append(np.asarray(start) * (1 - steps) + np.asarray(end) * steps)
    return np.concatenate(ramps)


def flow_to_rgb(field_2hw: np.ndarray | torch.Tensor, max_magnitude: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8 colours of a (2, H, W) field (channel 0 = x, 1 = y, y down).
    ``max_magnitude``: the length drawn at full colour (default: the field's largest)."""
    field = torch.as_tensor(field_2hw).detach().float().cpu().numpy()
    u, v = field[0], field[1]
    magnitude = np.hypot(u, v)
    scale = max_magnitude if max_magnitude is not None else float(magnitude.max())
    radius = np.clip(magnitude / scale, 0, 1) if scale > 0 else np.zeros_like(magnitude)
    wheel = colour_wheel()
    # angle of the flow, measured so that +x lands at the wheel's end (red) and +y a quarter in
    position = (np.arctan2(-v, -u) / math.pi + 1) / 2 * len(wheel)  # [0, len]
    low = np.floor(position).astype(np.int64) % len(wheel)
    high = (low + 1) % len(wheel)
    frac = (position - np.floor(position))[..., None]
    colour = (1 - frac) * wheel[low] + frac * wheel[high]
    colour = 1 - radius[..., None] * (1 - colour)  # white at rest, the wheel's colour at full length
    return np.round(colour * 255).astype(np.uint8)


def motion_strip(
    field_2fhw: np.ndarray | torch.Tensor, frames_fhw3: np.ndarray | None = None, max_frames: int = 12
) -> Image.Image:
    """A clip's flow images in a row (at most ``max_frames``, spread evenly, one colour scale
    for all: the 98th percentile of their non-zero vector lengths), under its video frames
    when given ((F, h, w, 3) uint8, the clip's frames, resized to the tiles)."""
    field = torch.as_tensor(field_2fhw).detach().float().cpu()
    _, num_frames, height, width = field.shape
    shown = np.unique(np.linspace(0, num_frames - 1, min(max_frames, num_frames)).round().astype(np.int64))
    lengths = torch.linalg.vector_norm(field[:, shown], dim=0)
    moving = lengths[lengths > 0]
    # the colour scale: a high percentile, not the maximum, since the encoder's odd stray
    # vector (a flat block matched far away) would wash the rest of the clip out
    scale = float(torch.quantile(moving, FULL_COLOUR_QUANTILE)) if len(moving) else None
    zoom = max(1, math.ceil(MIN_TILE_WIDTH / width))
    tile_w, tile_h = width * zoom, height * zoom
    rows = 2 if frames_fhw3 is not None else 1
    strip = Image.new("RGB", (len(shown) * (tile_w + GAP) - GAP, rows * (tile_h + GAP) - GAP), "black")
    for column, f in enumerate(shown):
        left = column * (tile_w + GAP)
        flow = Image.fromarray(flow_to_rgb(field[:, f], scale)).resize((tile_w, tile_h), Image.NEAREST)
        strip.paste(flow, (left, (rows - 1) * (tile_h + GAP)))
        if frames_fhw3 is not None:
            frame = Image.fromarray(np.asarray(frames_fhw3[f], dtype=np.uint8))
            strip.paste(frame.resize((tile_w, tile_h), Image.BILINEAR), (left, 0))
    return strip
