"""Learning-rate schedule: linear warmup, then cosine decay to ``min_lr_ratio`` x lr.

The reference (``src/train/schedular.py``, divot-reference §6.3) uses factor = s / warmup
during warmup, so its first update runs at lr 0. Here update ``s`` (0-based) uses
(s + 1) / warmup, so no update is wasted; from ``warmup`` on both follow the same cosine:

    p = (s - warmup) / (max_steps - warmup)
    factor = m + (1 - m) * 0.5 * (1 + cos(pi * p)),   m = min_lr_ratio

which reaches m at ``max_steps`` (and stays there if training continues past it).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from divot_llm.config.schema import OptimConfig


class WarmupCosine:
    """The LR factor of optimizer update ``step`` (a picklable callable for ``LambdaLR``).

    Args:
        warmup_steps: Updates of linear warmup (0: none).
        max_steps: Updates of the whole run; the cosine ends here.
        min_lr_ratio: Final factor (the cosine floor), e.g. 0.05.
    """

    def __init__(self, warmup_steps: int, max_steps: int, min_lr_ratio: float):
        if warmup_steps < 0 or max_steps < 1:
            raise ValueError(f"need warmup_steps >= 0 and max_steps >= 1, got {warmup_steps}, {max_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay_steps = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        m = self.min_lr_ratio
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: OptimConfig, max_steps: int) -> LambdaLR:
    """``LambdaLR`` over optimizer updates (DeepSpeed steps it once per update)."""
    factor = WarmupCosine(optim_cfg.warmup_steps, max_steps, optim_cfg.min_lr_ratio)
    return LambdaLR(optimizer, factor)
