"""Where metrics and messages go (rank 0 only): a progress bar, ``metrics.jsonl``,
TensorBoard, W&B, and the run's log file.

``metrics.jsonl`` (one JSON object per logged step or validation) is the plain-text
record the tests and ``tools/`` read. ``train.log`` holds every console message with its
time, the warnings libraries log (Hydra's job log handler appends to the same file) and
the traceback of any rank that failed (``append_log``). W&B is imported only when
enabled and its mode is left to the user's environment (``WANDB_MODE``): never forced
offline.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from divot_llm.config.schema import TrainConfig

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
LOG_FILE = "train.log"  # also the name of Hydra's job log (the job is "train"): one file


def append_log(output_dir: str | Path, text: str, name: str = LOG_FILE) -> Path:
    """Append ``text`` (a line or a block, time-stamped) to the run's log file (``name``
    in ``output_dir``), from any rank: one ``write`` in append mode, so blocks of several
    ranks do not interleave.

    Raises:
        OSError: the folder cannot be created or the file written.
    """
    path = Path(output_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as log:
        log.write(_stamped(text))
    return path


def _stamped(text: str) -> str:
    return f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text.rstrip()}\n"


class Tracker:
    """Fans one dict of scalars out to every enabled sink.

    Args:
        output_dir: The run's output folder.
        train_cfg: ``cfg.train`` (``tensorboard``, ``wandb``, ``wandb_project``, ``progress_bar``).
        run_name: Experiment name (W&B run name).
        config: The resolved config as a plain dict (W&B run config).
        start_step / max_steps: Progress bar range (a resumed run starts part-way).
        enabled: False on ranks other than 0: every call is a no-op.
    """

    def __init__(
        self,
        output_dir: str | Path,
        train_cfg: TrainConfig,
        run_name: str,
        config: dict,
        start_step: int,
        max_steps: int,
        enabled: bool,
    ):
        self.enabled = enabled
        self._tb = self._wandb = self._bar = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._jsonl = (out / METRICS_FILE).open("a", buffering=1)
        self._log = (out / LOG_FILE).open("a", buffering=1)
        if train_cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(out / TENSORBOARD_DIR), purge_step=start_step + 1)
        if train_cfg.wandb:
            import wandb  # optional extra: pip install -e ".[wandb]"

            # One W&B run per output dir: a resumed run continues the same curves.
            id_file = out / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
            id_file.write_text(run_id)
            self._wandb = wandb.init(
                project=train_cfg.wandb_project, name=run_name, id=run_id, config=config, resume="allow"
            )
        if train_cfg.progress_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=max_steps,
                initial=start_step,
                desc=run_name,
                dynamic_ncols=True,
                file=sys.stderr,
                unit="step",
            )

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        """Record ``metrics`` (keys like ``train/loss``) at ``step``."""
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, "kind": kind, **metrics}) + "\n")
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def image(self, step: int, tag: str, image_hw3: np.ndarray) -> None:
        """Record an RGB image (``(H, W, 3)`` uint8, e.g. a grid of samples) at ``step``
        in TensorBoard and W&B (``metrics.jsonl`` holds scalars only)."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.add_image(tag, image_hw3, step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(image_hw3)}, step=step)

    def progress(self, step: int, postfix: dict[str, str]) -> None:
        """Move the bar to ``step`` (tqdm computes the ETA) with short readouts."""
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(postfix, refresh=False)

    def message(self, text: str) -> None:
        """A line on rank 0's console that does not break the progress bar, and in the log."""
        if not self.enabled:
            return
        self._log.write(_stamped(text))
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._jsonl.close()
        self._log.close()
        self.enabled = False
