"""Train the demo model on 2 CPU ranks and keep what the live engine holds.

Run by ``tests/conftest.py`` under ``torch.distributed.run``, once for the ZeRO-2 and the
ZeRO-3 run: one launch (one interpreter and DeepSpeed start-up per rank) for both, one
after the other in the same ranks, each into ``OUT/zero<stage>``; after a run's last
checkpoint rank 0 writes the trainable parameters as the engine has them (ZeRO-3 shards
gathered) to ``OUT/zero<stage>/live.pt``.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.export.live_run DATA OUT ZERO_STAGES [OVERRIDE...]

ZERO_STAGES is a comma-separated list (``2,3``), run in that order. Each run is 2 steps,
unless overrides give its schedule (``train.max_steps`` etc.).
"""

from __future__ import annotations

import atexit
import gc
import sys
from pathlib import Path

import torch


def main(data_root: str, out_dir: str, zero_stages: str, *schedule: str) -> None:
    from divot_llm.train import distributed

    torch.set_num_threads(1)
    try:
        for zero_stage in zero_stages.split(","):
            train_and_keep_live(data_root, Path(out_dir) / f"zero{zero_stage}", zero_stage, schedule)
    finally:
        distributed.shutdown_distributed()


def train_and_keep_live(data_root: str, out: Path, zero_stage: str, schedule: tuple[str, ...]) -> None:
    """One run (the process group, once set up, is shared: each ``Trainer`` finds it)."""
    import deepspeed

    from divot_llm.config import compose_config
    from divot_llm.train.trainer import Trainer
    from tests.train.conftest import RUN_OVERRIDES

    cfg = compose_config([
        *RUN_OVERRIDES, f"deepspeed=zero{zero_stage}", f"data.root={data_root}", f"train.output_dir={out}",
        *(schedule or ("train.max_steps=2", "train.save_every=2", "train.eval_every=0", "train.eval_at_start=false")),
    ])  # fmt: skip
    trainer = Trainer(cfg)
    try:
        trainer.setup()
        trainer.train()
        named = [(n, p) for n, p in trainer.engine.module.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters([p for _, p in named], enabled=zero_stage == "3"):
            live = {n: p.detach().clone().float() for n, p in named}
        if trainer.dist.is_main:
            torch.save(live, out / "live.pt")
    finally:
        trainer.cleanup()


if __name__ == "__main__":
    atexit.register(gc.freeze)  # no exit-time collection over torch's objects (as divot-train)
    main(*sys.argv[1:])
