"""Training: the DeepSpeed engine, the six stages, checkpoints, metrics, planning.

``Trainer`` (``trainer.py``) runs the one training loop; what each stage trains and how is
its ``Stage`` (``stages/``); ``divot-train`` (``divot_llm/cli/train.py``) runs it under any
launcher. Submodules import DeepSpeed lazily where they can, and this package imports
nothing until one of its names is used: ``python -m divot_llm.train`` refuses a bad
config before torch has loaded.
"""

__all__ = ["WarmupCosine", "build_scheduler"]


def __getattr__(name: str):
    if name in __all__:
        from divot_llm.train import schedule

        return getattr(schedule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
