"""Build the models of a run from its config: a ``DivotLLM`` for a training stage or from
a release for inference, and the (tokenizer, de-tokenizer) pairs the de-tokenizer stages
train.

The video tokenizer's feature shape (N tokens per clip, D dims, and for code features
the levels of each dim) is passed in by the caller (``tokenizer.num_tokens`` /
``tokenizer.feature_dim`` / ``tokenizer.feature_levels``), so nothing here assumes
Divot's 64 x 256. The LLM's own tokens per clip M (``DivotLLM.tokens_per_clip``) follow
from N and ``model.resampler``: ``llm_tokens_per_clip`` says how many, and why not.

Everything random at build time -- the tokenizer and LLM of tiny random-init configs, the
LoRA and projection inits, a random de-tokenizer -- comes from one sequence seeded with
``train.seed`` on the CPU, so every rank, a resumed run and the export (whose checkpoints
hold no frozen weights) rebuild the same frozen values whatever the device.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import MistralForCausalLM

from divot_llm.config.schema import DivotConfig, ModelConfig
from divot_llm.detokenizers import VideoDetokenizer, build_video_detokenizer, video_detokenizer_class
from divot_llm.detokenizers.training import (
    TokenizerDiffusionObjective,
    apply_reference_zero_init,
    tokenizer_frame_positions,
)
from divot_llm.layout import AGENT_DIR, LLM_DIR
from divot_llm.model.backbone import load_backbone, resize_vocab
from divot_llm.model.divot import DivotLLM
from divot_llm.model.heads import build_video_head
from divot_llm.model.lora import apply_lora
from divot_llm.model.release import load_agent_weights
from divot_llm.model.resampler import QUERIES, llm_tokens
from divot_llm.runtime import seed_everything
from divot_llm.text import DivotTextTokenizer, load_text_tokenizer
from divot_llm.text.special_tokens import NUM_ADDED_TOKENS, NUM_FRAME_TOKENS
from divot_llm.tokenizers import VideoTokenizer, build_video_tokenizer


def build_divot_llm(
    model_cfg: ModelConfig,
    *,
    feature_tokens: int,
    feature_dim: int,
    feature_levels: Sequence[int] | None = None,
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
    tokens (a no-op for a release, which already has them); add LoRA; add the video head's
    input and output modules (random, or ``init_from/agent``) and freeze those the stage
    does not train.

    Args:
        model_cfg: ``cfg.model`` (dataclass or the composed DictConfig).
        feature_tokens: N, from the video tokenizer (``num_tokens``); the model's
            ``tokens_per_clip`` is ``model_cfg.resampler``'s M.
        feature_dim: D, from the video tokenizer.
        feature_levels: The video tokenizer's ``feature_levels`` (None: continuous
            features); must fit ``model_cfg.head``.
        train_input_proj: ``cfg.stage.train_input_proj``.
        train_output_proj: ``cfg.stage.train_output_proj``.
        init_from: ``cfg.stage.init_from``: a release folder (``llm/`` + ``agent/``).
        use_lora: Wrap with LoRA when ``model_cfg.lora.enabled``; False keeps the bare LLM.
        dtype: Parameter dtype (fp32 as the reference; DeepSpeed casts for bf16).
        device: ``"meta"`` builds without memory (counting, planning).

    Raises:
        ValueError: ``model_cfg.head`` does not fit the features (``build_video_head``).
    """
    video_head = build_video_head(model_cfg, feature_dim, feature_levels)  # before the slow part
    llm_path = Path(init_from) / LLM_DIR if init_from is not None else None
    backbone = load_backbone(model_cfg.llm, path=llm_path, dtype=dtype, device=device)
    resize_vocab(backbone, model_cfg.llm.vocab_size + NUM_ADDED_TOKENS, model_cfg.llm.new_lm_head_rows_scale)
    enable_recompute(backbone, model_cfg.llm.checkpoint_every)
    if model_cfg.llm.compile:
        compile_layers(backbone)
    llm = apply_lora(backbone, model_cfg.lora) if use_lora and model_cfg.lora.enabled else backbone

    with torch.device(device or "cpu"):
        model = DivotLLM(
            llm,
            feature_tokens=feature_tokens,
            feature_dim=feature_dim,
            video_head=video_head,
            resampler=model_cfg.resampler,
            lm_loss_scale=model_cfg.lm_loss_scale,
            gmm_loss_scale=model_cfg.gmm_loss_scale,
            train_input_proj=train_input_proj,
            train_output_proj=train_output_proj,
            attn_implementation=model_cfg.llm.attn_implementation,
        )
    model.input_resampler.to(dtype)
    model.output_resampler.to(dtype)
    if init_from is not None:
        load_agent_weights(model, Path(init_from) / AGENT_DIR)
    return model


def enable_recompute(backbone: MistralForCausalLM, checkpoint_every: int) -> None:
    """Activation checkpointing of decoder layers 0, k, 2k, ... (``checkpoint_every=k``;
    0 leaves every layer's activations in memory, 1 recomputes every layer).

    Non-reentrant checkpointing needs no grad-requiring inputs (frozen embeddings are fine,
    so LoRA needs no input-grad hook) and works under DeepSpeed's ZeRO. transformers flags
    each ``GradientCheckpointingLayer`` on or off (``every_n_layers``); the flag is read at
    every forward, so peft wrapping the layers' projections afterwards keeps it.
    """
    if checkpoint_every == 0:
        return
    backbone.activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": False}, every_n_layers=checkpoint_every
    )
    backbone.config.use_cache = False


def checkpointed_layers(checkpoint_every: int, num_layers: int) -> int:
    """How many of ``num_layers`` decoder layers ``enable_recompute`` checkpoints (and
    backward recomputes): layers 0, k, 2k, ..."""
    return 0 if checkpoint_every == 0 else -(-num_layers // checkpoint_every)


def recomputed_fraction(model: DivotLLM) -> float:
    """The fraction of ``model``'s decoder layers that backward recomputes (for HFU)."""
    layers = model.causal_lm.model.layers
    return sum(layer.gradient_checkpointing for layer in layers) / len(layers)


def compile_layers(backbone: MistralForCausalLM) -> None:
    """``torch.compile`` each decoder layer in place (``nn.Module.compile``: parameter names,
    state dicts and peft's module paths are unchanged). Layers, not the whole model: the mask
    building, loss indexing and video head stay eager, and one compiled graph serves all layers."""
    for layer in backbone.model.layers:
        layer.compile()


def build_stage_model(
    cfg: DivotConfig,
    video_tokenizer: VideoTokenizer,
    *,
    init_from: str | os.PathLike | None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> DivotLLM:
    """The model of ``cfg``'s LLM stage (``cfg.model``, ``cfg.stage``) sized to the video
    tokenizer's features: what training builds, and (on ``device="meta"``) what
    ``plan=true`` counts.

    Raises:
        ValueError: the tokenizer's tokens do not fit the LLM (``llm_tokens_per_clip``), or
            ``model.head`` its features.
    """
    llm_tokens_per_clip(cfg.model, video_tokenizer)
    return build_divot_llm(
        cfg.model,
        feature_tokens=video_tokenizer.num_tokens,
        feature_dim=video_tokenizer.feature_dim,
        feature_levels=video_tokenizer.feature_levels,
        train_input_proj=cfg.stage.train_input_proj,
        train_output_proj=cfg.stage.train_output_proj,
        init_from=init_from,
        dtype=dtype,
        device=device,
    )


def llm_tokens_per_clip(model_cfg: ModelConfig, video_tokenizer: VideoTokenizer) -> int:
    """M, the LLM's tokens per clip (placeholders, generation queries: what every sequence
    is built with) over this tokenizer's N feature tokens per clip: N token by token
    (``model.resampler.kind=tokenwise``), ``model.resampler.num_queries`` with learned
    queries.

    Raises:
        ValueError: token by token, N is more than the LLM's ``<frame_i>`` tokens; the
            message names both ways out (learned queries, or a tokenizer with fewer tokens).
    """
    n = video_tokenizer.num_tokens
    if model_cfg.resampler.kind != QUERIES and n > NUM_FRAME_TOKENS:
        raise ValueError(
            f"the video tokenizer gives {n} tokens per clip, more than the LLM's {NUM_FRAME_TOKENS} frame "
            f"tokens (model.resampler.kind={model_cfg.resampler.kind}: one LLM token per feature token): set "
            f"model.resampler.kind=queries (model.resampler.num_queries <= {NUM_FRAME_TOKENS} learned queries "
            f"read the {n}), or {video_tokenizer.fewer_tokens_hint(NUM_FRAME_TOKENS)}"
        )
    return llm_tokens(model_cfg.resampler, n)


def build_models(
    cfg: DivotConfig, dtype: torch.dtype, cached_features: bool = False
) -> tuple[DivotTextTokenizer, VideoTokenizer, DivotLLM]:
    """(text tokenizer, video tokenizer, model) of an LLM stage, built on the CPU from
    ``train.seed`` (see the module docstring); the model starts from ``stage.init_from``.
    ``cached_features``: the run reads a feature cache, so the tokenizer is built without
    its ViT (``VideoTokenizer.for_cached_features``; the same random values otherwise)."""
    seed_everything(cfg.train.seed)
    text_tokenizer = load_text_tokenizer(cfg.model.tokenizer_path)
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer, cached_features=cached_features)
    model = build_stage_model(cfg, video_tokenizer, init_from=cfg.stage.init_from, dtype=dtype)
    return text_tokenizer, video_tokenizer, model


def check_tokenizer_fits(tokenizer: VideoTokenizer, detokenizer: VideoDetokenizer) -> None:
    """The de-tokenizer decodes this tokenizer's features, from frames of its own window
    (any frame size: the tokenizer resizes to its own).

    Raises:
        ValueError: feature widths that differ, or a window too short for the tokenizer.
    """
    if tokenizer.feature_dim != detokenizer.feature_dim:
        raise ValueError(
            f"the video tokenizer's features are {tokenizer.feature_dim}-d but the de-tokenizer decodes "
            f"{detokenizer.feature_dim}-d features (detokenizer.feature_dim)"
        )
    tokenizer_frame_positions(detokenizer.num_frames, tokenizer.frames_per_clip)


def build_detokenizer(cfg: DivotConfig, tokenizer: VideoTokenizer | None) -> VideoDetokenizer:
    """``cfg.detokenizer`` with the frozen tokenizer's zero-clip features as its null
    features (none without a tokenizer: stage t2v conditions on text), then the weights of ``stage.detokenizer_init_from`` (a ``save_pretrained``
    folder, loaded strictly: its shapes must be the config's) when set.

    Raises:
        ValueError: the ``stage.detokenizer_init_from`` weights do not fit ``cfg.detokenizer``.
    """
    detok = build_video_detokenizer(cfg.detokenizer, tokenizer=tokenizer)
    init_from = cfg.stage.detokenizer_init_from
    if init_from is not None:
        saved = video_detokenizer_class(cfg.detokenizer.arch).from_pretrained(init_from)
        try:
            detok.load_state_dict(saved.state_dict(), strict=True)
        except RuntimeError as err:
            raise ValueError(
                f"stage.detokenizer_init_from={init_from} does not fit cfg.detokenizer: {err}"
            ) from err
    return detok


def _tokenizer_and_detokenizer(cfg: DivotConfig) -> tuple[VideoTokenizer, VideoDetokenizer]:
    """The video tokenizer and the de-tokenizer that decodes its features, on the CPU,
    fp32, from ``train.seed``."""
    seed_everything(cfg.train.seed)
    tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    detok = build_detokenizer(cfg, tokenizer)
    check_tokenizer_fits(tokenizer, detok)
    return tokenizer, detok


def build_detok_models(cfg: DivotConfig) -> tuple[VideoTokenizer, VideoDetokenizer]:
    """(frozen video tokenizer, de-tokenizer) of a stage that trains the de-tokenizer on
    fixed features (detok, detok_adapt), with the parts ``cfg.stage`` names trainable."""
    tokenizer, detok = _tokenizer_and_detokenizer(cfg)
    tokenizer.freeze()
    detok.set_trainable(cfg.stage.train_diffusion_model, cfg.stage.train_image_proj_model)
    return tokenizer, detok


def build_tokenizer_objective(cfg: DivotConfig) -> tuple[VideoTokenizer, TokenizerDiffusionObjective]:
    """(video tokenizer, ``TokenizerDiffusionObjective`` holding it and the de-tokenizer)
    of the stage that trains the tokenizer after its ViT through the diffusion loss."""
    tokenizer, detok = _tokenizer_and_detokenizer(cfg)
    if cfg.stage.tokenizer_zero_init:
        apply_reference_zero_init(tokenizer.encoder.temporal_encoder)
    objective = TokenizerDiffusionObjective(tokenizer, detok)  # tokenizer after its ViT trains
    detok.set_trainable(cfg.stage.train_diffusion_model, cfg.stage.train_image_proj_model)
    objective.refresh_null_features()  # of the tokenizer as it starts
    return tokenizer, objective


def load_release(
    release_dir: str | os.PathLike,
    model_cfg: ModelConfig,
    *,
    feature_tokens: int,
    feature_dim: int,
    feature_levels: Sequence[int] | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> DivotLLM:
    """A release (``llm/`` + ``agent/``) for inference: no LoRA, everything frozen, eval.
    The feature shape as ``build_divot_llm``'s."""
    model = build_divot_llm(
        model_cfg,
        feature_tokens=feature_tokens,
        feature_dim=feature_dim,
        feature_levels=feature_levels,
        init_from=release_dir,
        use_lora=False,
        dtype=dtype,
        device=device,
    )
    model.requires_grad_(False)
    return model.eval()
