"""The two gloo ranks of test_motion_tokenizer's EMA codebook test: a light module (torch and
the objective only), because each rank is a freshly spawned interpreter."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from divot_llm.config.schema import MotionVQConfig
from divot_llm.tokenizers.motion.objective import EmaCodebook


def ema_rank(rank: int, store: str, out: str) -> None:
    """One of two gloo ranks: the same start codebook, its own latents; a few updates."""
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        for restart_threshold in (0.0, 0.5):
            codebook_kd, ema, z_snd, codes_sn = ema_inputs(restart_threshold, rank)
            for z_nd, codes_n in zip(z_snd, codes_sn, strict=True):
                ema.update(codebook_kd, z_nd, codes_n)
            torch.save(
                {"codebook": codebook_kd, **ema.state_dict()}, f"{out}/rank{rank}_{restart_threshold}.pt"
            )
    finally:
        dist.destroy_process_group()


def ema_inputs(restart_threshold: float, rank: int | None):
    """Start codebook (8 x 4) and EMA, and 3 steps of latents: rank r's (5 each, its own
    seed), or both ranks' concatenated (rank None)."""
    start_kd = F.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    ema = EmaCodebook(start_kd, MotionVQConfig(ema_decay=0.7, restart_threshold=restart_threshold), seed=3)
    ranks = [rank] if rank is not None else [0, 1]
    steps = []
    for step in range(3):
        z_nd = torch.cat([
            F.normalize(torch.randn(5, 4, generator=torch.Generator().manual_seed(10 * r + step)), dim=1)
            for r in ranks
        ])  # fmt: skip
        steps.append(z_nd)
    codes = [(z_nd @ start_kd.T).argmax(dim=1) for z_nd in steps]  # any assignment will do
    return start_kd.clone(), ema, steps, codes
