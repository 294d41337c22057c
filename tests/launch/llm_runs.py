"""Several short LLM training runs, one after the other, in the same 2 CPU ranks: one
launch (one interpreter and DeepSpeed start-up per rank) for all of them.

Run by ``test_vidtok_llm.py`` under ``torch.distributed.run``:

    python -m torch.distributed.run --nproc_per_node 2 -m tests.launch.llm_runs DATA OUT RUNS_JSON

RUNS_JSON maps a run name to its overrides (on top of the tests' ``RUN_OVERRIDES``, the
data root and ``train.output_dir=OUT/<name>``); the runs share the process group, which
each ``Trainer`` finds initialised.
"""

from __future__ import annotations

import atexit
import gc
import json
import sys
from pathlib import Path

import torch


def main(data_root: str, out_dir: str, runs_json: str) -> None:
    from divot_llm.config import compose_config
    from divot_llm.train import distributed
    from divot_llm.train.trainer import Trainer
    from tests.train.conftest import RUN_OVERRIDES

    torch.set_num_threads(1)
    try:
        for name, overrides in json.loads(runs_json).items():
            cfg = compose_config([
                *RUN_OVERRIDES, f"data.root={data_root}", f"train.output_dir={Path(out_dir) / name}", *overrides,
            ])  # fmt: skip
            trainer = Trainer(cfg)
            try:
                trainer.setup()
                trainer.train()
            finally:
                trainer.cleanup()
    finally:
        distributed.shutdown_distributed()


if __name__ == "__main__":
    atexit.register(gc.freeze)  # no exit-time collection over torch's objects (as divot-train)
    main(*sys.argv[1:])
