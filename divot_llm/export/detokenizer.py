"""Export a de-tokenizer stage's checkpoint (detok, tokenizer, detok_adapt) as
``save_pretrained`` folders -- what ``from_pretrained``, ``stage.detokenizer_init_from``
and inference load. (LLM stages export with ``divot-merge``; this is ``divot-export detokenizer``.)

Steps: rebuild the stage's module from the checkpoint's own resolved config (frozen
weights -- VAE, ViT, a random tiny tokenizer -- from where and with what seed the run took
them), load the trained tensors reassembled by DeepSpeed's ``zero_to_fp32`` (fp32,
ZeRO-1/2/3, any number of ranks), and save. A run that kept an EMA of its weights
(``stage.ema.enabled``: ``ema.safetensors`` in the checkpoint) exports the EMA weights, or
the raw trained ones with ``raw=True`` (``divot-export detokenizer --raw``). A stage that
generates from prompts (t2v) also gets the run's ``config.yaml``: it names the text
encoder that turns a prompt into the de-tokenizer's features (``divot-infer t2v``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file

from divot_llm.config import load_saved_config
from divot_llm.config.loading import RESOLVED_CONFIG_NAME
from divot_llm.detokenizers.training import TokenizerDiffusionObjective
from divot_llm.export.trained import load_trained_tensors
from divot_llm.export.zero import resolve_checkpoint
from divot_llm.layout import DETOKENIZER_DIR, EMA_FILE, VIDEO_TOKENIZER_DIR
from divot_llm.train.ema import load_averaged
from divot_llm.train.stages import stage_class


def detok_checkpoint_to_pretrained(
    checkpoint: str | os.PathLike, out_dir: str | os.PathLike, raw: bool = False
) -> Path:
    """Write ``out_dir/detokenizer/`` (and, for stage ``tokenizer``, ``out_dir/video_tokenizer/``;
    for a stage that generates from prompts, ``out_dir/config.yaml``).

    For stage ``tokenizer`` the de-tokenizer's null features (guidance's unconditional
    input) are refreshed to the *trained* tokenizer's zero-clip features first.

    Args:
        checkpoint: A ``checkpoints/step_*`` folder, or a run's output folder (its latest
            complete checkpoint is used).
        out_dir: Folder to create.
        raw: the trained weights even when the checkpoint holds their EMA (which is
            exported by default).

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: no complete checkpoint at ``checkpoint``.
        FileNotFoundError: the checkpoint carries no ``config.yaml`` (not written by divot-train).
        ConfigError: its ``config.yaml`` is not a config this version can read (or names
            no known stage).
        ValueError: the checkpoint is of an LLM stage (release it with ``divot-merge``).

    Example:
        >>> out = detok_checkpoint_to_pretrained("outputs/detok_256", "releases/detok_256")
        >>> detok = load_video_detokenizer(out / "detokenizer")  # divot_llm.detokenizers
    """
    ckpt = resolve_checkpoint(checkpoint)  # refuses half-written / incomplete checkpoints
    path = ckpt.dir
    cfg = load_saved_config(path / RESOLVED_CONFIG_NAME)
    stage = stage_class(cfg.stage.name)
    if not stage.trains_detokenizer:
        raise ValueError(f"{path} is a {cfg.stage.name} checkpoint: release it with divot-merge")
    _, module = stage.build_modules(cfg)  # fp32, CPU, frozen weights as the run had them
    state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=ckpt.tag, exclude_frozen_parameters=True)
    load_trained_tensors(module, state)
    if (path / EMA_FILE).is_file() and not raw:
        trained = {n for n, p in module.named_parameters() if p.requires_grad}
        load_averaged(module, load_file(str(path / EMA_FILE)), trained)
    out = Path(out_dir)
    if stage.samples_prompts:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path / RESOLVED_CONFIG_NAME, out / RESOLVED_CONFIG_NAME)
    if isinstance(module, TokenizerDiffusionObjective):  # the tokenizer stage trained both
        module.refresh_null_features()
        module.detokenizer.save_pretrained(out / DETOKENIZER_DIR)
        module.tokenizer.save_pretrained(out / VIDEO_TOKENIZER_DIR)
    else:
        module.save_pretrained(out / DETOKENIZER_DIR)
    return out
