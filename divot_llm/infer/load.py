"""Everything inference needs, from a release folder or from Divot's official ``pretrained/``.

Two ways in, one result (``InferenceModels``):

* **our release** (``divot-merge`` output): ``config.yaml`` in the release describes the
  model, tokenizer and de-tokenizer it was trained with; the text tokenizer is in
  ``llm/``; a random-init video tokenizer (tiny configs) is in ``video_tokenizer/``.
* **the official layout** -- Divot's HF files placed as its README says::

      pretrained/Divot_{pretrain,sft_comp,sft_gen}/{llm,agent}
      pretrained/cvlm_mistral_instruct_tokenizer/
      pretrained/Divot_tokenizer_detokenizer/Divot_tokenizer.bin, Divot_detokenizer_stage{1,2}.bin
      pretrained/CLIP-ViT-H-14-laion2B-s32B-b79K/

  composed from ``conf/experiment/divot_official.yaml`` with ``pretrained_root`` pointing
  at that folder; ``stage`` picks ``Divot_<stage>`` (sft_comp to comprehend, sft_gen to
  generate).

``overrides`` are ``key=value`` changes applied to either config, strictly: a key the
schema does not have fails naming it. Every local path a load reads is checked before
anything is built.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from divot_llm.config import DivotConfig, compose_config, load_saved_config
from divot_llm.config.loading import RESOLVED_CONFIG_NAME as RELEASE_CONFIG
from divot_llm.config.paths import PathError, check_config_paths, check_path
from divot_llm.config.schema import PathKind
from divot_llm.detokenizers import build_video_detokenizer
from divot_llm.detokenizers.base import VideoDetokenizer
from divot_llm.detokenizers.registry import load_video_detokenizer
from divot_llm.layout import DETOKENIZER_DIR, LLM_DIR, VIDEO_TOKENIZER_DIR
from divot_llm.model import DivotLLM, load_release
from divot_llm.runtime import default_dtype
from divot_llm.text import load_text_tokenizer
from divot_llm.text.tokenizer import DivotTextTokenizer
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.tokenizers.base import LatentVideoTokenizer, VideoTokenizer
from divot_llm.tokenizers.registry import load_video_tokenizer, video_tokenizer_class

OFFICIAL_EXPERIMENT = "divot_official"
OFFICIAL_STAGE_FOR = {"comprehend": "sft_comp", "generate": "sft_gen", "reconstruct": "sft_comp"}
OFFICIAL_DETOKENIZER = {  # stage-1 weights reconstruct tokenizer features, stage 2 decodes LLM ones
    "reconstruct": "Divot_detokenizer_stage1.bin",
    "generate": "Divot_detokenizer_stage2.bin",
}


@dataclass
class InferenceModels:
    cfg: DivotConfig
    release_dir: Path | None  # stage.init_from; None when the config names no release
    model: DivotLLM | None  # None when the LLM was not asked for (reconstruct)
    text_tokenizer: DivotTextTokenizer | None
    video_tokenizer: VideoTokenizer
    # None: not configured (or no weights), or not wanted: a tokenizer that decodes itself
    # (``decodes_itself``) turns generated features into frames without one
    detokenizer: VideoDetokenizer | None


def release_config(release_dir: str | os.PathLike, overrides: Sequence[str] = ()) -> DivotConfig:
    """The config saved in one of our releases, with ``overrides`` applied.

    Raises:
        PathError: not a release (missing, a training run folder, ...), or a release
            without ``config.yaml`` (Divot's own files: use the official layout).
        ConfigError: an override the schema does not take.
    """
    release = check_path(release_dir, PathKind.release, "--release")
    path = release / RELEASE_CONFIG
    if not path.is_file():
        raise PathError(
            f"{path} is missing: --release takes a divot-merge output; for Divot's official files "
            "use --official PRETRAINED_DIR"
        )
    cfg = load_saved_config(path, overrides)
    cfg.stage.init_from = str(release)
    return cfg


def official_config(
    pretrained_root: str | os.PathLike, task: str, overrides: Sequence[str] = ()
) -> DivotConfig:
    """The composed config for Divot's official files under ``pretrained_root``."""
    root = check_path(pretrained_root, PathKind.folder, "--official").resolve()
    chosen = [
        f"experiment={OFFICIAL_EXPERIMENT}",
        f"pretrained_root={root}",
        f"stage={OFFICIAL_STAGE_FOR[task]}",
        *(
            [f"detokenizer.pretrained_path={root}/Divot_tokenizer_detokenizer/{OFFICIAL_DETOKENIZER[task]}"]
            if task in OFFICIAL_DETOKENIZER
            else []
        ),
    ]
    # later overrides win: a user's stage=... or detokenizer.pretrained_path=... replaces ours
    return compose_config([*chosen, *overrides])


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_inference_models(
    cfg: DivotConfig,
    *,
    with_llm: bool = True,
    detokenizer: str | os.PathLike | None = None,
    want_detokenizer: bool = False,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> InferenceModels:
    """Load the parts of ``cfg`` (a ``release_config`` / ``official_config``) a task needs.

    Args:
        with_llm: Load the Divot LLM (comprehend, generate); reconstruct needs none.
        detokenizer: A de-tokenizer to use instead of the configured one: a folder written
            by ``save_pretrained`` (e.g. from de-tokenizer training) or a weights file in
            the release key layout (``Divot_detokenizer_stage2.bin``).
        want_detokenizer: Load the configured de-tokenizer if it has weights (a
            random-init one would decode noise, so it counts as "not configured"), unless
            the video tokenizer decodes itself (``decodes_itself``: VidTok); an explicit
            ``detokenizer`` is loaded either way.
        device: Default: CUDA if available, else CPU.
        dtype: LLM dtype; default bf16 on CUDA, fp32 on CPU.
    """
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    release = Path(cfg.stage.init_from) if cfg.stage.init_from else None
    want_detokenizer = want_detokenizer and not decodes_itself(cfg)
    if with_llm and release is None:
        raise ValueError("stage.init_from must name the release (llm/ + agent/) to load")
    if detokenizer is not None:
        kind = PathKind.detokenizer if Path(detokenizer).is_dir() else PathKind.file
        check_path(detokenizer, kind, "--detokenizer")
    check_config_paths(cfg, _config_reads(cfg, release, with_llm, detokenizer, want_detokenizer))
    if _saved(release, VIDEO_TOKENIZER_DIR):
        video_tokenizer = load_video_tokenizer(release / VIDEO_TOKENIZER_DIR)
    else:
        video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    video_tokenizer = video_tokenizer.to(device, default_dtype(device))

    model = text_tokenizer = None
    if with_llm:
        text_tokenizer = _text_tokenizer(release, cfg)
        model = load_release(
            release, cfg.model, feature_tokens=video_tokenizer.num_tokens,
            feature_dim=video_tokenizer.feature_dim, feature_levels=video_tokenizer.feature_levels,
            dtype=dtype, device=device,
        )  # fmt: skip
    detok = _detokenizer(cfg, release, detokenizer, want_detokenizer, video_tokenizer, device)
    return InferenceModels(cfg, release, model, text_tokenizer, video_tokenizer, detok)


def decodes_itself(cfg: DivotConfig) -> bool:
    """The configured video tokenizer is an autoencoder (``LatentVideoTokenizer``: VidTok)
    whose ``decode_features`` turns the LLM's features back into frames, so generation
    needs no de-tokenizer. Decided from the config, before anything is built."""
    return issubclass(video_tokenizer_class(cfg.video_tokenizer.arch), LatentVideoTokenizer)


def _config_reads(
    cfg: DivotConfig,
    release: Path | None,
    with_llm: bool,
    explicit: str | os.PathLike | None,
    wanted: bool,
) -> list[str]:
    """The config keys whose local paths this load reads, decided as the loaders below
    decide; the rest of a release's config names files of the machine it was trained on
    (its data, for one) and is not checked."""
    keys = [] if _saved(release, VIDEO_TOKENIZER_DIR) else ["video_tokenizer"]
    if with_llm:
        keys.append("stage.init_from")
        if not _release_has_tokenizer(release):
            keys.append("model.tokenizer_path")
    if explicit is not None and not Path(explicit).is_dir():
        keys.append("detokenizer.vae_path")  # a weights file is loaded onto the configured VAE
    elif explicit is None and wanted and not _saved(release, DETOKENIZER_DIR):
        keys.append("detokenizer")
    return keys


def _saved(release: Path | None, name: str) -> bool:
    """The release carries this module in save_pretrained form (``video_tokenizer/``, ...)."""
    return release is not None and (release / name).is_dir()


def _release_has_tokenizer(release: Path) -> bool:
    """Our releases keep the tokenizer (with Divot's tokens) in ``llm/``; Divot's official
    ``llm/`` has none, its tokenizer is ``cvlm_mistral_instruct_tokenizer``."""
    llm = release / LLM_DIR
    return (llm / "tokenizer.model").is_file() or (llm / "tokenizer.json").is_file()


def _text_tokenizer(release: Path, cfg: DivotConfig) -> DivotTextTokenizer:
    if _release_has_tokenizer(release):
        return load_text_tokenizer(release / LLM_DIR)
    return load_text_tokenizer(cfg.model.tokenizer_path)


def _detokenizer(
    cfg: DivotConfig,
    release: Path | None,
    explicit: str | os.PathLike | None,
    wanted: bool,
    video_tokenizer: VideoTokenizer,
    device: torch.device,
) -> VideoDetokenizer | None:
    if explicit is not None:
        path = Path(explicit)
        if path.is_dir():
            detok = load_video_detokenizer(path)
        else:
            weights = dataclasses.replace(cfg.detokenizer, pretrained_path=str(path))
            detok = build_video_detokenizer(weights, tokenizer=video_tokenizer)
    elif not wanted:
        return None
    elif _saved(release, DETOKENIZER_DIR):
        detok = load_video_detokenizer(release / DETOKENIZER_DIR)
    elif cfg.detokenizer.pretrained_path:
        detok = build_video_detokenizer(cfg.detokenizer, tokenizer=video_tokenizer)
    else:
        return None
    return detok.to(device).eval()
