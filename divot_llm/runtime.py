"""Small facts about where code runs, each stated once: the default compute dtype of a
device, seeding, the devices whose RNG a ``fork_rng`` must save, and "eval mode, then
give the caller's mode back". Every package may import this module; it imports only
torch, numpy and the standard library."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU, fp32 elsewhere: bf16 GEMMs are ~100x slower than fp32 on AVX2 CPUs."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (NumPy takes 32 bits)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices ``torch.random.fork_rng(devices=...)`` must save for work on
    ``device``: only its own (the default, every visible GPU, is slow and warns)."""
    return [device.index or 0] if device.type == "cuda" else []


@contextlib.contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Dropout (LoRA's included) off inside the block; the caller's mode comes back after,
    also on an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
