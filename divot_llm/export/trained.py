"""A training stage's module as one of its checkpoints left it: what every ``divot-export``
of a stage that is not an LLM stage starts from (``detokenizer``, ``vidtok``,
``motion-tokenizer``; LLM stages go through ``divot-merge``).

The module is rebuilt from the checkpoint's own resolved config (frozen weights from where
and with what seed the run took them), then the trained tensors DeepSpeed's
``zero_to_fp32`` reassembles (fp32, ZeRO-1/2/3, any number of ranks; buffers included) are
loaded into it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from divot_llm.config import load_saved_config
from divot_llm.config.loading import RESOLVED_CONFIG_NAME
from divot_llm.config.schema import DivotConfig
from divot_llm.export.zero import resolve_checkpoint


def load_trained_tensors(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's trainable tensors (plus any buffers it carries) into a rebuilt
    module whose frozen weights are already in place.

    Raises:
        ValueError: a trainable parameter the checkpoint lacks, or a tensor the module
            does not have (the checkpoint is of another stage or config).
    """
    missing, unexpected = module.load_state_dict(state, strict=False)
    untrained = sorted(set(missing) & {n for n, p in module.named_parameters() if p.requires_grad})
    if untrained or unexpected:
        raise ValueError(
            "the checkpoint does not fit the stage's module: "
            f"trainable but not saved: {untrained[:5]}, unknown: {sorted(unexpected)[:5]}"
        )


def trained_module(
    checkpoint: str | os.PathLike, stage: str, build: Callable[[DivotConfig], torch.nn.Module]
) -> tuple[DivotConfig, dict[str, torch.Tensor], torch.nn.Module]:
    """(its config, its trained tensors, the module ``build(cfg)`` makes, with them loaded)
    of a checkpoint of stage ``stage``.

    Args:
        checkpoint: A ``checkpoints/step_*`` folder, or a run's output folder (its latest
            complete checkpoint is used).
        build: the stage's module from a config, fp32 on the CPU.

    Raises:
        CheckpointError: no complete checkpoint at ``checkpoint``.
        ValueError: the checkpoint is of another stage, or does not fit the module.
    """
    ckpt = resolve_checkpoint(checkpoint)  # refuses half-written / incomplete checkpoints
    cfg = load_saved_config(ckpt.dir / RESOLVED_CONFIG_NAME)
    if cfg.stage.name != stage:
        raise ValueError(f"{ckpt.dir} is a {cfg.stage.name} checkpoint, not a {stage} one")
    module = build(cfg)
    state = get_fp32_state_dict_from_zero_checkpoint(
        str(ckpt.dir), tag=ckpt.tag, exclude_frozen_parameters=True
    )
    load_trained_tensors(module, state)
    return cfg, state, module
