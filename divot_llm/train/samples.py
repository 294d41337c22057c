"""The clips a run samples every ``train.sample_every`` steps (stages that generate from
prompts, e.g. t2v), as files: one gif per prompt and a grid (one row per prompt, its
frames left to right) under ``<output_dir>/samples/step_XXXXXXXX/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from divot_llm.data.media_out import frame_strip, slug, write_gif
from divot_llm.layout import SAMPLES_DIR
from divot_llm.train.checkpoint import step_dir_name

GRID_FILE = "grid.png"


def samples_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / SAMPLES_DIR / step_dir_name(step)


def write_samples(
    output_dir: str | Path, step: int, prompts: list[str], clips_bfchw: torch.Tensor, fps: float
) -> tuple[Path, np.ndarray]:
    """Write ``NN_<prompt>.gif`` per clip and ``grid.png``; returns (the folder, the grid
    as ``(H, W, 3)`` uint8 for TensorBoard)."""
    folder = samples_dir(output_dir, step)
    for index, (prompt, clip_fchw) in enumerate(zip(prompts, clips_bfchw, strict=True)):
        write_gif(folder / f"{index:02d}_{slug(prompt)}.gif", clip_fchw, fps)
    grid = frame_strip(list(clips_bfchw), max_frames=clips_bfchw.shape[1])
    grid.save(folder / GRID_FILE)
    return folder, np.asarray(grid)
