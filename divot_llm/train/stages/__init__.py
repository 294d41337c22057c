"""What differs between training stages, as one small object per stage kind: the module
the DeepSpeed engine trains, the data it reads, how a batch becomes the engine's inputs,
which losses and rates are logged, and validation. ``Trainer`` keeps the one loop
(engine, accumulation, NaN skips, signals, checkpoints, logging) around it.

``STAGES`` is the one place that knows the stage names (``stage.name``):

* ``LLMStage`` (``llm.py``) -- pretrain / sft_comp / sft_gen: the Divot LLM on token
  sequences.
* ``DetokStage``, ``TokenizerStage`` (``detok.py``) -- detok / tokenizer: the
  de-tokenizer (with the tokenizer, for tokenizer) on full windows.
* ``DetokAdaptStage`` (``detok_adapt.py``) -- detok_adapt: the de-tokenizer on features
  sampled from a trained Divot LLM.
* ``T2VStage`` (``t2v.py``) -- t2v: the VDM de-tokenizer on a frozen text encoder's
  caption vectors (text to video).
* ``VidTokStage`` (``vidtok.py``) -- vidtok: VidTok's autoencoder against a PatchGAN
  discriminator, two engines (two optimizers).
* ``MotionTokenizerStage`` (``motion_tokenizer.py``) -- motion_tokenizer: Video-LaVIT's
  motion tokenizer on motion-vector fields, its codebook by EMA.
* ``LaVITLLMStage`` (``lavit_llm.py``) -- lavit_pretrain / lavit_sft: Video-LaVIT's LLM
  on text + keyframe-code + motion-code sequences from a tokens cache.
* ``LaVITDetokStage`` (``lavit_detok.py``) -- lavit_detok: Video-LaVIT's video de-tokenizer
  on motion clips and their frames.

The models are built on the CPU from ``train.seed`` (``divot_llm.model.build``), so every
rank, a resumed run and the export rebuild the same frozen values whatever the device.
"""

from __future__ import annotations

import torch

from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import DivotConfig
from divot_llm.train.stages.base import Stage
from divot_llm.train.stages.detok import DetokStage, TokenizerStage
from divot_llm.train.stages.detok_adapt import DetokAdaptStage
from divot_llm.train.stages.lavit_detok import LaVITDetokStage
from divot_llm.train.stages.lavit_llm import LaVITLLMStage
from divot_llm.train.stages.llm import LLMStage
from divot_llm.train.stages.motion_tokenizer import MotionTokenizerStage
from divot_llm.train.stages.t2v import T2VStage
from divot_llm.train.stages.vidtok import VidTokStage

STAGES: dict[str, type[Stage]] = {
    "pretrain": LLMStage,
    "sft_comp": LLMStage,
    "sft_gen": LLMStage,
    "detok": DetokStage,  # de-tokenizer (stage 1) on the frozen tokenizer's features
    "tokenizer": TokenizerStage,  # tokenizer (all but the ViT) + de-tokenizer through the diffusion loss
    "detok_adapt": DetokAdaptStage,  # de-tokenizer adaptation (stage 2) on features sampled from the LLM's GMM
    "t2v": T2VStage,  # text to video: the VDM de-tokenizer on a frozen text encoder's caption vectors
    "vidtok": VidTokStage,  # VidTok's autoencoder + PatchGAN discriminator (two engines)
    "motion_tokenizer": MotionTokenizerStage,  # Video-LaVIT's motion tokenizer, EMA codebook
    "lavit_pretrain": LaVITLLMStage,  # Video-LaVIT's LLM: captions + generation over keyframe/motion codes
    "lavit_sft": LaVITLLMStage,  # the same from a pretrained language_model/: QA chats + generation
    "lavit_detok": LaVITDetokStage,  # Video-LaVIT's video de-tokenizer: frame 0 + motion field -> clip
}


def stage_class(name: str) -> type[Stage]:
    """The stage class of ``stage.name``.

    Raises:
        ConfigError: a name that is not a stage, listing the known ones.
    """
    stage = STAGES.get(name)
    if stage is None:
        raise ConfigError(f"stage.name={name!r} is not a stage; known stages: {', '.join(STAGES)}")
    return stage


def make_stage(cfg: DivotConfig, device: torch.device, dtype: torch.dtype) -> Stage:
    """The stage of ``cfg.stage.name``, to train on ``device`` in ``dtype``."""
    return stage_class(cfg.stage.name)(cfg, device, dtype)


def training_reads(cfg: DivotConfig) -> list[str]:
    """The config keys whose paths a ``divot-train`` run reads (``config.paths``): the
    stage's; the others may name files of another stage (a de-tokenizer stage builds no
    LLM).

    Raises:
        ConfigError: ``stage.name`` is not a stage.
    """
    if cfg.plan:  # the model on the meta device: model.llm.path's config.json only
        return ["model.llm.path"]
    return stage_class(cfg.stage.name).config_reads(cfg)


__all__ = [
    "STAGES",
    "DetokAdaptStage",
    "DetokStage",
    "LLMStage",
    "LaVITDetokStage",
    "LaVITLLMStage",
    "MotionTokenizerStage",
    "Stage",
    "T2VStage",
    "TokenizerStage",
    "VidTokStage",
    "make_stage",
    "stage_class",
    "training_reads",
]
