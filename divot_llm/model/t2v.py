"""Text to video: a frozen text encoder's caption vectors condition a de-tokenizer (the
VDM one: video-diffusion-pytorch's Unet3D + GaussianDiffusion) as its ``(B, 1, D)``
features. What ``stage=t2v`` trains (``divot_llm.train.stages.t2v``), its export holds
(``detokenizer/`` + the run's ``config.yaml``, whose ``stage.text_encoder`` names the
encoder) and ``divot-infer t2v`` runs (``divot_llm.infer.t2v``)."""

from __future__ import annotations

import torch

from divot_llm.config.schema import DivotConfig
from divot_llm.detokenizers import VideoDetokenizer
from divot_llm.model.build import build_detokenizer
from divot_llm.runtime import seed_everything
from divot_llm.text.encoders import FrozenTextEncoder, build_text_encoder


def text_encoder_reads(cfg: DivotConfig) -> list[str]:
    """The config keys whose local paths building the text encoder reads (``config.paths``):
    ``stage.text_encoder``, and ``model.llm.path`` for an ``llm_mean`` encoder without a path."""
    encoder = cfg.stage.text_encoder
    return [
        "stage.text_encoder",
        *(["model.llm.path"] if encoder.kind == "llm_mean" and encoder.path is None else []),
    ]


def build_text_encoder_of(cfg: DivotConfig) -> FrozenTextEncoder:
    """``stage.text_encoder`` (``llm_mean`` without a path reads ``model.llm.path``)."""
    return build_text_encoder(cfg.stage.text_encoder, llm_path=cfg.model.llm.path)


def check_text_encoder_fits(encoder: FrozenTextEncoder, detokenizer: VideoDetokenizer) -> None:
    """The de-tokenizer decodes the encoder's vectors.

    Raises:
        ValueError: their widths differ (naming both settings).
    """
    if encoder.dim != detokenizer.feature_dim:
        raise ValueError(
            f"the text encoder's vectors are {encoder.dim}-d but the de-tokenizer decodes "
            f"{detokenizer.feature_dim}-d features: set detokenizer.feature_dim={encoder.dim} (and, with "
            f"detokenizer.pooling=none, detokenizer.cond_dim={encoder.dim})"
        )


def build_t2v_models(cfg: DivotConfig) -> tuple[FrozenTextEncoder, VideoDetokenizer]:
    """(frozen text encoder, de-tokenizer with the parts ``cfg.stage`` names trainable), on
    the CPU, fp32, the de-tokenizer's random init from ``train.seed``; then the weights of
    ``stage.detokenizer_init_from`` when set.

    Raises:
        ValueError: the encoder's width is not the de-tokenizer's ``feature_dim``, or the
            ``detokenizer_init_from`` weights do not fit.
    """
    encoder = build_text_encoder_of(cfg)
    seed_everything(cfg.train.seed)
    detok = build_detokenizer(cfg, tokenizer=None)
    check_text_encoder_fits(encoder, detok)
    detok.set_trainable(cfg.stage.train_diffusion_model, cfg.stage.train_image_proj_model)
    return encoder, detok


@torch.no_grad()
def text_features(encoder: FrozenTextEncoder, captions: list[str], device: torch.device) -> torch.Tensor:
    """The captions' vectors as de-tokenizer features ``(B, 1, D)`` on ``device``."""
    return encoder.encode(list(captions)).to(device)[:, None, :]


def text_to_video(
    encoder: FrozenTextEncoder,
    detokenizer: VideoDetokenizer,
    captions: list[str],
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """One clip per caption, ``(B, F, 3, H, W)`` in [-1, 1] (``decode``: every draw from
    ``seed``, on the CPU; ``steps`` / ``guidance`` default to the de-tokenizer config's)."""
    feats_b1d = text_features(encoder, captions, detokenizer.device)
    return detokenizer.decode(feats_b1d, steps=steps, guidance=guidance, seed=seed)
