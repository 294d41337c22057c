"""Training: the DeepSpeed engine, the one training loop, the stage recipes, checkpoints,
metrics, planning.

``Trainer`` is the loop every stage shares; a stage recipe (six: pretrain, sft_comp,
sft_gen, detok, tokenizer, detok_adapt) says what the stage builds, freezes and computes.
``divot-train`` (``divot_llm/cli/train.py``) runs it under any launcher. Submodules import
DeepSpeed lazily where they can, so importing this package stays cheap.
"""

from divot_llm.train.schedule import WarmupCosine, build_scheduler

__all__ = ["WarmupCosine", "build_scheduler"]
