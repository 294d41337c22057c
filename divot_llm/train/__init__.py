"""Training: the DeepSpeed engine, the six stages, checkpoints, metrics, planning.

``Trainer`` (``trainer.py``) runs the one training loop; what each stage trains and how is
its ``Stage`` (``stages/``); ``divot-train`` (``divot_llm/cli/train.py``) runs it under any
launcher. Submodules import DeepSpeed lazily where they can, so importing this package
stays cheap.
"""

from divot_llm.train.schedule import WarmupCosine, build_scheduler

__all__ = ["WarmupCosine", "build_scheduler"]
