"""Export a ``stage=lavit_detok`` checkpoint (``divot-export motion-detokenizer CKPT OUT``)::

    OUT/vae/ scheduler/ unet/           the release's video_detokenizer/ layout (diffusers
                                        folders; unet/ also holds motion_encoder.*)
    OUT/motion_detokenizer_config.json  our config: load_motion_detokenizer(OUT), or
                                        motion_detokenizer.pretrained_path of a next run

Steps: rebuild the stage's de-tokenizer from the checkpoint's resolved config (the frozen VAE
from where and with what seed the run took it), load the trained UNet and motion encoder
reassembled by DeepSpeed's ``zero_to_fp32`` (fp32, any ZeRO stage, any number of ranks), save.
"""

from __future__ import annotations

import os
from pathlib import Path

from divot_llm.export.trained import trained_module
from divot_llm.train.stages.lavit_detok import build_lavit_detok


def motion_detokenizer_checkpoint_to_pretrained(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """Write the trained video de-tokenizer's ``save_pretrained`` folder ``out_dir``.

    Args:
        checkpoint: A ``checkpoints/step_*`` folder, or a run's output folder (its latest
            complete checkpoint is used).
        out_dir: Folder to create (or fill).

    Raises:
        CheckpointError: no complete checkpoint at ``checkpoint``.
        ValueError: the checkpoint is not of stage lavit_detok, or does not fit its module.
    """
    _, _, detokenizer = trained_module(checkpoint, "lavit_detok", build_lavit_detok)
    out = Path(out_dir)
    detokenizer.save_pretrained(out)
    return out
