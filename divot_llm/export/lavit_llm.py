"""A trained Video-LaVIT LLM (stage=lavit_pretrain | lavit_sft) as an HF ``language_model/``
folder: what ``stage=lavit_sft`` starts from (``model.llm.path`` and
``model.tokenizer_path``) and what a release's ``language_model/`` holds, less the
``visual_weight.bin`` the release writer adds (docs/lavit.md, "The LLM")."""

from __future__ import annotations

import os
from pathlib import Path

from divot_llm.config import load_saved_config
from divot_llm.config.loading import RESOLVED_CONFIG_NAME
from divot_llm.config.schema import DivotConfig
from divot_llm.export.trained import trained_module
from divot_llm.export.zero import resolve_checkpoint
from divot_llm.model.lavit_llm import LaVITLLM, build_lavit_llm
from divot_llm.runtime import seed_everything
from divot_llm.text.lavit_tokenizer import load_lavit_text_tokenizer

LAVIT_LLM_STAGES = ("lavit_pretrain", "lavit_sft")


def build_stage_llm(cfg: DivotConfig) -> LaVITLLM:
    """The LLM as the run built it (fp32, CPU, seeded the same: a LoRA run's frozen base)."""
    seed_everything(cfg.train.seed)
    return build_lavit_llm(cfg.model, load_lavit_text_tokenizer(cfg.model.tokenizer_path).base_vocab_size)


def lavit_llm_checkpoint_to_pretrained(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the trained LLM of a lavit_pretrain / lavit_sft checkpoint (a ``checkpoints/step_*``
    folder, or a run folder: its latest complete checkpoint) as ``LaVITLLM.save_pretrained``
    does, with the run's text tokenizer: ``out_dir``.

    Raises:
        CheckpointError: no complete checkpoint. ValueError: a checkpoint of another stage.
    """
    stage = load_saved_config(resolve_checkpoint(checkpoint).dir / RESOLVED_CONFIG_NAME).stage.name
    if stage not in LAVIT_LLM_STAGES:
        raise ValueError(f"{checkpoint} is a {stage} checkpoint, not one of {', '.join(LAVIT_LLM_STAGES)}")
    cfg, _, llm = trained_module(checkpoint, stage, build_stage_llm)
    return llm.save_pretrained(out_dir, load_lavit_text_tokenizer(cfg.model.tokenizer_path))
