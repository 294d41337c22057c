"""Export a de-tokenizer stage's checkpoint (detok, tokenizer, detok_adapt) as
``save_pretrained`` folders -- what ``from_pretrained``, ``stage.detokenizer_init_from``
and inference load. (LLM stages export with ``divot-merge``; this is ``divot-export detokenizer``.)

Steps: rebuild the stage's module from the checkpoint's own resolved config (frozen
weights -- VAE, ViT, a random tiny tokenizer -- from where and with what seed the run took
them), load the trained tensors reassembled by DeepSpeed's ``zero_to_fp32`` (fp32,
ZeRO-1/2/3, any number of ranks), and save.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from divot_llm.config.loading import load_saved_config
from divot_llm.model.checkpoint import DETOKENIZER_DIR, VIDEO_TOKENIZER_DIR


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


def detok_checkpoint_to_pretrained(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/detokenizer/`` (and, for stage ``tokenizer``, ``out_dir/video_tokenizer/``).

    For stage ``tokenizer`` the de-tokenizer's null features (guidance's unconditional
    input) are refreshed to the *trained* tokenizer's zero-clip features first.

    Args:
        checkpoint: A ``checkpoints/step_*`` folder, or a run's output folder (its latest
            complete checkpoint is used).
        out_dir: Folder to create.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: no complete checkpoint at ``checkpoint``.
        ValueError: the checkpoint is of an LLM stage (use ``checkpoint_to_release``).

    Example:
        >>> out = detok_checkpoint_to_pretrained("outputs/detok_256", "releases/detok_256")
        >>> detok = load_video_detokenizer(out / "detokenizer")  # divot_llm.detokenizers
    """
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from divot_llm.config.schema import DETOK_STAGES, StageName
    from divot_llm.export.zero import resolve_checkpoint
    from divot_llm.train.recipes import build_detok_models, stage_name

    path = resolve_checkpoint(checkpoint).dir  # refuses half-written / incomplete checkpoints
    cfg = load_saved_config(path / "config.yaml")
    stage = stage_name(cfg)
    if stage not in DETOK_STAGES:
        raise ValueError(f"{path} is a {stage.value} checkpoint: release it with divot-merge")
    _, module = build_detok_models(cfg)  # fp32, CPU, frozen weights as the run had them
    state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag="engine", exclude_frozen_parameters=True)
    load_trained_tensors(module, state)
    out = Path(out_dir)
    if stage == StageName.tokenizer:
        module.refresh_null_features()
        module.detokenizer.save_pretrained(out / DETOKENIZER_DIR)
        module.tokenizer.save_pretrained(out / VIDEO_TOKENIZER_DIR)
    else:
        module.save_pretrained(out / DETOKENIZER_DIR)
    return out
