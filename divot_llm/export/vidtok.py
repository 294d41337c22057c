"""Export a ``stage=vidtok`` checkpoint (``divot-export vidtok CKPT OUT``)::

    OUT/video_tokenizer/   save_pretrained folder: load_video_tokenizer, video_tokenizer=
                           pretrained_path, stage.init_from of a next stage
    OUT/vidtok.ckpt        {"state_dict": {encoder.*, decoder.*}}: what VidTok's own
                           init_from_ckpt (and our load_vidtok_weights) reads

Steps: rebuild the stage's autoencoder from the checkpoint's resolved config (a frozen
half -- ``stage.fix_encoder`` -- from where the run took it), load the trained tensors
reassembled by DeepSpeed's ``zero_to_fp32`` (fp32, any ZeRO stage <= 2, any number of
ranks), and write both forms. The discriminator (``engine_disc/``) is training state only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from divot_llm.export.trained import trained_module
from divot_llm.layout import VIDEO_TOKENIZER_DIR
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.train.stages.vidtok import build_vidtok_models

VIDTOK_CKPT = "vidtok.ckpt"
KEPT_PREFIXES = ("encoder.", "decoder.")  # the keys a released VidTok checkpoint's state_dict holds


def vidtok_checkpoint_to_pretrained(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/video_tokenizer/`` and ``out_dir/vidtok.ckpt`` (module docstring).

    Args:
        checkpoint: A ``checkpoints/step_*`` folder, or a run's output folder (its latest
            complete checkpoint is used).
        out_dir: Folder to create (or fill).

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: no complete checkpoint at ``checkpoint``.
        ValueError: the checkpoint is not of stage vidtok.
    """
    # fp32, CPU, a frozen half as the run had it
    cfg, _, objective = trained_module(checkpoint, "vidtok", lambda cfg: build_vidtok_models(cfg)[0])
    weights = {
        name: tensor.detach().contiguous()
        for name, tensor in objective.autoencoder.state_dict().items()
        if name.startswith(KEPT_PREFIXES)
    }
    tokenizer = build_video_tokenizer(dataclasses.replace(cfg.video_tokenizer, pretrained_path=None))
    tokenizer.autoencoder.load_state_dict(weights, strict=True)
    out = Path(out_dir)
    tokenizer.save_pretrained(out / VIDEO_TOKENIZER_DIR)
    torch.save({"state_dict": weights}, out / VIDTOK_CKPT)
    return out
