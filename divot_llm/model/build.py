"""Build a ``DivotLLM`` from config: for a training stage, or from a release for inference.

The video tokenizer's feature shape (N tokens per clip, D dims) is passed in by the
caller (``tokenizer.num_tokens`` / ``tokenizer.feature_dim``), so nothing here assumes
Divot's 64 x 256.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from divot_llm.config.schema import ModelConfig
from divot_llm.layout import AGENT_DIR, LLM_DIR
from divot_llm.model.backbone import load_backbone, resize_vocab
from divot_llm.model.divot import DivotLLM
from divot_llm.model.gmm import GMMHead
from divot_llm.model.lora import apply_lora
from divot_llm.model.release import load_agent_weights
from divot_llm.text.special_tokens import NUM_ADDED_TOKENS


def build_divot_llm(
    model_cfg: ModelConfig,
    *,
    tokens_per_clip: int,
    feature_dim: int,
    train_input_proj: bool = True,
    train_output_proj: bool = True,
    init_from: str | os.PathLike | None = None,
    use_lora: bool = True,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> DivotLLM:
    """The model of a training stage (or, with ``use_lora=False``, a plain one).

    Steps, as the reference: load Mistral (``model_cfg.llm.path``, or ``init_from/llm``
    for an SFT stage) or build it from the config; grow the vocabulary by Divot's 262
    tokens (a no-op for a release, which already has them); add LoRA; add the projections
    (random, or ``init_from/agent``) and freeze those the stage does not train.

    Args:
        model_cfg: ``cfg.model`` (dataclass or the composed DictConfig).
        tokens_per_clip: N, from the video tokenizer.
        feature_dim: D, from the video tokenizer.
        train_input_proj: ``cfg.stage.train_input_proj``.
        train_output_proj: ``cfg.stage.train_output_proj``.
        init_from: ``cfg.stage.init_from``: a release folder (``llm/`` + ``agent/``).
        use_lora: Wrap with LoRA when ``model_cfg.lora.enabled``; False keeps the bare LLM.
        dtype: Parameter dtype (fp32 as the reference; DeepSpeed casts for bf16).
        device: ``"meta"`` builds without memory (counting, planning).
    """
    llm_path = Path(init_from) / LLM_DIR if init_from is not None else None
    backbone = load_backbone(model_cfg.llm, path=llm_path, dtype=dtype, device=device)
    resize_vocab(backbone, model_cfg.llm.vocab_size + NUM_ADDED_TOKENS, model_cfg.llm.new_lm_head_rows_scale)
    if model_cfg.llm.gradient_checkpointing:
        # Non-reentrant checkpointing needs no grad-requiring inputs (frozen embeddings are fine).
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        backbone.config.use_cache = False
    llm = apply_lora(backbone, model_cfg.lora) if use_lora and model_cfg.lora.enabled else backbone

    with torch.device(device or "cpu"):
        model = DivotLLM(
            llm,
            tokens_per_clip=tokens_per_clip,
            feature_dim=feature_dim,
            gmm=GMMHead.from_config(model_cfg.gmm, dim=feature_dim),
            lm_loss_scale=model_cfg.lm_loss_scale,
            gmm_loss_scale=model_cfg.gmm_loss_scale,
            train_input_proj=train_input_proj,
            train_output_proj=train_output_proj,
        )
    model.input_resampler.to(dtype)
    model.output_resampler.to(dtype)
    if init_from is not None:
        load_agent_weights(model, Path(init_from) / AGENT_DIR)
    return model


def build_stage_model(
    cfg: Any,
    video_tokenizer: Any,
    *,
    init_from: str | os.PathLike | None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> DivotLLM:
    """The model of ``cfg``'s LLM stage (``cfg.model``, ``cfg.stage``) sized to the video
    tokenizer's features: what training builds, and (on ``device="meta"``) what
    ``plan=true`` counts."""
    return build_divot_llm(
        cfg.model,
        tokens_per_clip=video_tokenizer.num_tokens,
        feature_dim=video_tokenizer.feature_dim,
        train_input_proj=cfg.stage.train_input_proj,
        train_output_proj=cfg.stage.train_output_proj,
        init_from=init_from,
        dtype=dtype,
        device=device,
    )


def load_release(
    release_dir: str | os.PathLike,
    model_cfg: ModelConfig,
    *,
    tokens_per_clip: int,
    feature_dim: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> DivotLLM:
    """A release (``llm/`` + ``agent/``) for inference: no LoRA, everything frozen, eval."""
    model = build_divot_llm(
        model_cfg,
        tokens_per_clip=tokens_per_clip,
        feature_dim=feature_dim,
        init_from=release_dir,
        use_lora=False,
        dtype=dtype,
        device=device,
    )
    model.requires_grad_(False)
    return model.eval()
