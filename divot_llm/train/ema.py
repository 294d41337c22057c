"""An exponential moving average (EMA) of a module's trained weights, as the seed
video-diffusion-pytorch Trainer keeps one (``stage.ema``, ``EmaConfig``).

The average lives in a frozen copy of the module (``ModuleEMA.module``: eval mode, fp32,
on the module's device), so it samples like the module itself. Only the trainable
parameters are averaged; the frozen ones (and buffers) are the module's own values. At
optimizer step ``s`` (counted from 1) with ``s % update_every == 0`` the average becomes
the weights while ``s < start_step`` and ``decay * avg + (1 - decay) * w`` from then on.

The trainer keeps it on rank 0 only (which writes checkpoints and samples), updates it
once per optimizer step (never per micro-batch of an accumulation) and saves it in each
checkpoint as ``ema.safetensors`` (``divot_llm.layout.EMA_FILE``); a resume loads it back
bit for bit. It reads the module's full parameters, so under ZeRO-3 (parameters
partitioned across ranks) the trainer refuses it at start-up.
"""

from __future__ import annotations

import copy
import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from divot_llm.config.schema import EmaConfig


class ModuleEMA:
    """The EMA of ``module``'s trainable parameters.

    Args:
        module: the module being trained (copied now: the average starts at its weights).
        config: ``stage.ema`` (decay, update_every, start_step).
    """

    def __init__(self, module: nn.Module, config: EmaConfig):
        self.decay, self.update_every, self.start_step = config.decay, config.update_every, config.start_step
        self.module = copy.deepcopy(module).float().eval().requires_grad_(False)
        trained = {name for name, p in module.named_parameters() if p.requires_grad}
        self.averaged = {n: p for n, p in self.module.named_parameters() if n in trained}

    @torch.no_grad()
    def update(self, step: int, module: nn.Module) -> None:
        """After optimizer step ``step`` (from 1) of ``module`` (the same architecture)."""
        if step % self.update_every:
            return
        live = dict(module.named_parameters())
        for name, avg in self.averaged.items():
            weight = live[name].detach().to(avg.dtype)
            if step < self.start_step:
                avg.copy_(weight)
            else:  # the seed's EMA.update_average: old * beta + (1 - beta) * new
                avg.mul_(self.decay).add_(weight, alpha=1 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged parameters (fp32, CPU), by name in the module."""
        return {name: avg.detach().cpu().contiguous() for name, avg in self.averaged.items()}

    def save(self, path: str | os.PathLike) -> None:
        save_file(self.state_dict(), str(path))

    def load(self, path: str | os.PathLike) -> None:
        """Restore a ``save``d average exactly.

        Raises:
            ValueError: the file holds other parameters (another config or stage).
        """
        load_averaged(self.module, load_file(str(path)), set(self.averaged))


def load_averaged(module: nn.Module, state: dict[str, torch.Tensor], names: set[str]) -> None:
    """Copy an EMA state (``ModuleEMA.state_dict``) into ``module``'s parameters ``names``
    (its trainable ones), checking that the two name sets agree.

    Raises:
        ValueError: a parameter of ``names`` missing from ``state``, or an unknown one.
    """
    missing, unknown = sorted(names - state.keys()), sorted(state.keys() - names)
    if missing or unknown:
        raise ValueError(
            f"the EMA weights do not fit the module: missing {missing[:5]}, unknown {unknown[:5]}"
        )
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name in names:
            params[name].copy_(state[name])
