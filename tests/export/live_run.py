"""Train the demo model on 2 CPU ranks and keep what the live engine holds.

Run by ``test_zero.py`` under ``torch.distributed.run``; after the run's last checkpoint
rank 0 writes the trainable parameters as the engine has them (ZeRO-3 shards gathered)
to ``<out>/live.pt``.

    python -m torch.distributed.run --nproc_per_node 2 -m tests.export.live_run DATA OUT ZERO_STAGE [OVERRIDE...]

The run is 2 steps, unless overrides give its schedule (``train.max_steps`` etc.).
"""

from __future__ import annotations

import atexit
import gc
import sys

import torch


def main(data_root: str, out_dir: str, zero_stage: str, *schedule: str) -> None:
    import deepspeed

    from divot_llm.config import compose_config
    from divot_llm.train import distributed
    from divot_llm.train.trainer import Trainer
    from tests.train.conftest import RUN_OVERRIDES

    torch.set_num_threads(1)
    cfg = compose_config([
        *RUN_OVERRIDES, f"deepspeed=zero{zero_stage}", f"data.root={data_root}", f"train.output_dir={out_dir}",
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
            torch.save(live, f"{out_dir}/live.pt")
    finally:
        trainer.cleanup()
        distributed.shutdown_distributed()


if __name__ == "__main__":
    atexit.register(gc.freeze)  # no exit-time collection over torch's objects (as divot-train)
    main(*sys.argv[1:])
