"""Turn a training checkpoint into a merged release (``llm/`` + ``agent/``), the form an
SFT stage starts from (``stage.init_from``) and inference loads.

Steps: rebuild the stage's model from the checkpoint's own resolved config (base weights
from where the run took them), load the trainable tensors reassembled by DeepSpeed's
``zero_to_fp32`` (fp32, ZeRO-1/2/3, any number of ranks), fold LoRA into the base
weights, and save in the release layout with the text tokenizer in ``llm/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from divot_llm.train.checkpoint import ENGINE_TAG, latest_checkpoint


def checkpoint_to_release(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the merged release of a training checkpoint.

    Args:
        checkpoint: A ``checkpoints/step_*`` folder, or a run's output folder (its latest
            complete checkpoint is used).
        out_dir: Release folder to create.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: no complete checkpoint at ``checkpoint``.
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from divot_llm.model import load_training_state_dict, save_release
    from divot_llm.train.trainer import build_models

    path = Path(checkpoint)
    if not (path / ENGINE_TAG).is_dir():
        found = latest_checkpoint(path / "checkpoints")
        if found is None:
            raise FileNotFoundError(f"no complete training checkpoint in {checkpoint}")
        path = found.path
    cfg = OmegaConf.load(path / "config.yaml")
    text_tokenizer, _, model = build_models(cfg, torch.float32)  # frozen weights as the run had them
    state = get_fp32_state_dict_from_zero_checkpoint(
        str(path), tag=ENGINE_TAG, exclude_frozen_parameters=True
    )
    load_training_state_dict(model, state)
    model.merge_lora()
    return save_release(model, out_dir, tokenizer=text_tokenizer)
