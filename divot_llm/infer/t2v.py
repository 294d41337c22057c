"""Text to video from a ``stage=t2v`` export (``divot-export detokenizer`` of the run):
``<folder>/detokenizer/`` (the VDM de-tokenizer, EMA weights unless exported ``--raw``)
and ``<folder>/config.yaml`` (the run's config: ``stage.text_encoder`` says which frozen
encoder turns a prompt into the de-tokenizer's ``(1, D)`` features)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from divot_llm.config import DivotConfig, load_saved_config
from divot_llm.config.loading import RESOLVED_CONFIG_NAME
from divot_llm.config.paths import PathError, check_config_paths, check_path
from divot_llm.config.schema import PathKind
from divot_llm.detokenizers.base import VideoDetokenizer
from divot_llm.detokenizers.registry import load_video_detokenizer
from divot_llm.infer.load import default_device
from divot_llm.layout import DETOKENIZER_DIR
from divot_llm.model.t2v import build_text_encoder_of, check_text_encoder_fits, text_encoder_reads
from divot_llm.text.encoders import FrozenTextEncoder


@dataclass
class T2VModels:
    cfg: DivotConfig  # the run's config, with the caller's overrides
    text_encoder: FrozenTextEncoder
    detokenizer: VideoDetokenizer


def load_t2v(
    folder: str | os.PathLike, overrides: Sequence[str] = (), device: torch.device | None = None
) -> T2VModels:
    """The text encoder and de-tokenizer of a t2v export, on ``device`` (default: CUDA if
    available), eval.

    Raises:
        PathError: not a t2v export, or a text-encoder path of its config missing here.
        ConfigError: an override the schema does not take.
        ValueError: the encoder's width is not the de-tokenizer's.
    """
    root = check_path(folder, PathKind.folder, "--release")
    config, detok_dir = root / RESOLVED_CONFIG_NAME, root / DETOKENIZER_DIR
    if not config.is_file() or not detok_dir.is_dir():
        raise PathError(
            f"{root} is not a t2v export (it needs {RESOLVED_CONFIG_NAME} and {DETOKENIZER_DIR}/): write one "
            "with divot-export detokenizer RUN OUT from a stage=t2v run"
        )
    cfg = load_saved_config(config, overrides)
    check_config_paths(cfg, text_encoder_reads(cfg))
    device = device or default_device()
    encoder = build_text_encoder_of(cfg).to(device).eval()
    detok = load_video_detokenizer(detok_dir).to(device).eval()
    check_text_encoder_fits(encoder, detok)
    return T2VModels(cfg, encoder, detok)


def output_paths(out: str | os.PathLike, count: int) -> list[Path]:
    """Where the clips of ``count`` prompts go: ``out`` itself for one, else
    ``<stem>_000<suffix>``, ``<stem>_001<suffix>``, ..."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{index:03d}{out.suffix}") for index in range(count)]
