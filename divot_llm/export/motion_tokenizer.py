"""Export a ``stage=motion_tokenizer`` checkpoint (``divot-export motion-tokenizer CKPT OUT``)::

    OUT/motion_tokenizer_config.json + model.safetensors
        the motion tokenizer's save_pretrained folder: load_motion_tokenizer, or
        motion_tokenizer.pretrained_path (of inference, or of a next run)

Steps: rebuild the stage's objective from the checkpoint's resolved config, load the
trained weights reassembled by DeepSpeed's ``zero_to_fp32`` (fp32, any ZeRO stage <= 2,
any number of ranks) together with the buffers the checkpoint carries -- the EMA-trained
codebook among them -- and save the tokenizer alone (the EMA statistics are training state).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from divot_llm.export.trained import trained_module
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer
from divot_llm.train.stages.motion_tokenizer import build_motion_objective

TOKENIZER_PREFIX = "tokenizer."  # the objective's tokenizer, in its state dict


def motion_tokenizer_checkpoint_to_pretrained(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """Write the trained motion tokenizer's ``save_pretrained`` folder ``out_dir``.

    Args:
        checkpoint: A ``checkpoints/step_*`` folder, or a run's output folder (its latest
            complete checkpoint is used).
        out_dir: Folder to create (or fill).

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: no complete checkpoint at ``checkpoint``.
        ValueError: the checkpoint is not of stage motion_tokenizer, or lacks a trained tensor.
    """
    # fp32, CPU, from the run's starting weights
    cfg, state, objective = trained_module(checkpoint, "motion_tokenizer", build_motion_objective)
    if TOKENIZER_PREFIX + "quantize.embedding.weight" not in state:
        raise ValueError(f"{checkpoint} holds no codebook (tokenizer.quantize.embedding.weight)")
    weights = {
        name.removeprefix(TOKENIZER_PREFIX): tensor.detach().contiguous()
        for name, tensor in objective.state_dict().items()
        if name.startswith(TOKENIZER_PREFIX)
    }
    # a plain tokenizer (the codebook a parameter again, as every loader expects)
    tokenizer = build_motion_tokenizer(dataclasses.replace(cfg.motion_tokenizer, pretrained_path=None))
    tokenizer.load_state_dict(weights, strict=True)
    out = Path(out_dir)
    tokenizer.save_pretrained(out)
    return out
