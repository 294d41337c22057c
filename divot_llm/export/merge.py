"""Training checkpoint -> merged release (``divot-merge``).

Steps: read the trained tensors (a ZeRO checkpoint, reassembled by DeepSpeed's
``zero_to_fp32``, or the folder ``divot-export zero-to-fp32`` wrote), rebuild the stage's
model from the run's own resolved config (base weights from where the run took them,
overridable), load the tensors, fold LoRA into the base weights (``merge_and_unload``),
cast, and write the release layout::

    <out>/llm/               HF Mistral folder: sharded safetensors, config with the grown
                             vocabulary, generation config, text tokenizer files
    <out>/agent/             pytorch_model.bin: the video head's tensors (GMM: 8 projections)
    <out>/video_tokenizer/   only for a random-init tokenizer (tiny configs), which has no
                             weights file of its own to point at
    <out>/config.yaml        the run's resolved config (inference reads its model parts)
    <out>/release.json       stage, source checkpoint, config hash, dtype, verification

Everything is written to ``<out>.tmp`` and renamed only after ``--verify`` passed, so a
failed merge never leaves something that looks like a release.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from divot_llm.config import DivotConfig, config_to_yaml, load_saved_config
from divot_llm.config.paths import check_config_paths, model_reads
from divot_llm.export.verify import (
    Comparison,
    VerificationError,
    compare,
    reference_outputs,
    verification_batches,
)
from divot_llm.export.zero import (
    CONFIG_FILE,
    CheckpointError,
    is_fp32_export,
    read_fp32_export,
    resolve_checkpoint,
)
from divot_llm.layout import EXPORT_INFO, RELEASE_INFO, VIDEO_TOKENIZER_DIR
from divot_llm.model import DivotLLM, load_release, load_training_state_dict, save_release
from divot_llm.model.build import build_models
from divot_llm.text.tokenizer import DivotTextTokenizer
from divot_llm.tokenizers.base import VideoTokenizer
from divot_llm.train.stages import stage_class

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class MergeResult:
    out_dir: Path
    info: dict
    comparisons: list[Comparison] = field(default_factory=list)


@dataclass
class _Expected:
    """What the unmerged model gave on the verification batches."""

    batches: list[dict]
    outputs: list[dict[str, torch.Tensor]]


def load_trained_state(
    checkpoint: str | os.PathLike, overrides: Sequence[str] = ()
) -> tuple[dict[str, torch.Tensor], DivotConfig, dict]:
    """(fp32 tensors, the run's resolved config, where they came from) of a checkpoint.

    The config is read, ``overrides`` applied and the paths the rebuild reads are checked
    before the tensors are, so a typo costs no time.

    Raises:
        CheckpointError: no complete checkpoint there, or one of a de-tokenizer stage.
        FileNotFoundError: the checkpoint carries no ``config.yaml`` (not written by divot-train).
        ConfigError: an override the schema does not take, or a path the rebuild reads
            that is not there (``PathError``).
    """
    path = Path(checkpoint)
    if is_fp32_export(path):
        source = json.loads((path / EXPORT_INFO).read_text())
        config_file = path / CONFIG_FILE
        read_state = functools.partial(read_fp32_export, path)
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        ckpt = resolve_checkpoint(path)
        source = {"source": str(ckpt.dir.resolve()), "step": ckpt.step, "zero_stage": ckpt.zero_stage}
        config_file = ckpt.config_file or ckpt.dir / CONFIG_FILE
        read_state = functools.partial(
            get_fp32_state_dict_from_zero_checkpoint,
            str(ckpt.dir),
            tag=ckpt.tag,
            exclude_frozen_parameters=True,
        )
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{config_file} is missing: divot-merge rebuilds the model from the run's resolved config"
        )
    cfg = load_saved_config(config_file, overrides)
    if stage_class(cfg.stage.name).trains_detokenizer:
        raise CheckpointError(
            f"{path} is a checkpoint of the de-tokenizer stage {cfg.stage.name}: export it with "
            f"divot-export detokenizer {path} OUT"
        )
    check_config_paths(cfg, model_reads(cfg))
    return read_state(), cfg, source


def config_hash(cfg: DivotConfig) -> str:
    return hashlib.sha256(config_to_yaml(cfg).encode()).hexdigest()[:16]


def merge_release(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "fp32",
    verify: bool = False,
    overrides: Sequence[str] = (),
    max_shard_size: str = "5GB",
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> MergeResult:
    """Write the merged release of a training checkpoint (see the module docstring).

    Args:
        checkpoint: A run folder, a ``checkpoints/step_*`` folder or a ``zero-to-fp32`` output.
        out_dir: Release folder to create.
        dtype: ``fp32`` (the reference's release) or ``bf16`` (half the size).
        verify: Compare the unmerged model with the written release; raise if they differ.
        overrides: ``key=value`` changes to the run's config, e.g. the base model's new
            location (``model.llm.path=/models/mistral``).
        overwrite: Replace an existing ``out_dir``.

    Raises:
        VerificationError: ``verify`` found the release does not reproduce the model.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ConfigError: a bad override or a missing path (see ``load_trained_state``).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    state, cfg, source = load_trained_state(checkpoint, overrides)
    log(f"rebuilding the {cfg.stage.name} model of {source['source']} (step {source.get('step')})")
    text_tokenizer, video_tokenizer, model = _rebuild(cfg, state)
    del state
    expected = None
    if verify:  # the unmerged model's outputs, before merge_lora changes it in place
        batches = verification_batches(text_tokenizer, model, feature_levels=video_tokenizer.feature_levels)
        expected = _Expected(batches, reference_outputs(model, batches))

    tmp = out.with_name(out.name + ".tmp")
    log(f"writing {dtype} release to {tmp}")
    _write_merged(model, text_tokenizer, video_tokenizer, cfg, tmp, DTYPES[dtype], max_shard_size)
    del model  # on disk now: not held twice while the release is loaded back
    comparisons = []
    if expected is not None:
        comparisons = _verify_written(tmp, cfg, video_tokenizer, expected, DTYPES[dtype], log)
    info = release_info(cfg, source, dtype, comparisons)
    (tmp / RELEASE_INFO).write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return MergeResult(out, info, comparisons)


def _rebuild(
    cfg: DivotConfig, state: dict[str, torch.Tensor]
) -> tuple[DivotTextTokenizer, VideoTokenizer, DivotLLM]:
    """The run's tokenizers and model, frozen weights as the run had them (fp32), with the
    trained tensors loaded; eval mode."""
    text_tokenizer, video_tokenizer, model = build_models(cfg, torch.float32)
    load_training_state_dict(model, state)
    return text_tokenizer, video_tokenizer, model.eval()


def _write_merged(
    model: DivotLLM,
    text_tokenizer: DivotTextTokenizer,
    video_tokenizer: VideoTokenizer,
    cfg: DivotConfig,
    tmp: Path,
    dtype: torch.dtype,
    max_shard_size: str,
) -> None:
    """LoRA folded in (``model`` changes in place), cast, written in the release layout
    with the config; a random-init video tokenizer, which has no weights file of its own
    to point at, is saved beside."""
    shutil.rmtree(tmp, ignore_errors=True)
    model.merge_lora()
    model.to(dtype)
    save_release(model, tmp, tokenizer=text_tokenizer, max_shard_size=max_shard_size)
    if cfg.video_tokenizer.pretrained_path is None:
        video_tokenizer.save_pretrained(tmp / VIDEO_TOKENIZER_DIR)
    (tmp / CONFIG_FILE).write_text(config_to_yaml(cfg))


def _verify_written(
    tmp: Path,
    cfg: DivotConfig,
    video_tokenizer: VideoTokenizer,
    expected: _Expected,
    dtype: torch.dtype,
    log: Callable[[str], None],
) -> list[Comparison]:
    """Compare the release as loaded back from ``tmp`` with the unmerged model's outputs.

    Raises:
        VerificationError: they differ beyond the dtype's tolerance; ``tmp`` is removed.
    """
    merged = load_release(
        tmp, cfg.model, feature_tokens=video_tokenizer.num_tokens, feature_dim=video_tokenizer.feature_dim,
        feature_levels=video_tokenizer.feature_levels, dtype=dtype,
    )  # fmt: skip
    comparisons = compare(expected.outputs, reference_outputs(merged, expected.batches), dtype)
    for c in comparisons:
        log(f"verify {c}")
    if not all(c.ok for c in comparisons):
        shutil.rmtree(tmp, ignore_errors=True)
        raise VerificationError(
            "the merged release does not reproduce the trained model: "
            + "; ".join(str(c) for c in comparisons if not c.ok)
            + " -- the checkpoint's adapter or projection weights are corrupt or do not fit this "
            "base model; nothing was written"
        )
    return comparisons


def release_info(cfg: DivotConfig, source: dict, dtype: str, comparisons: list[Comparison]) -> dict:
    """The release's ``release.json``: what it was made from and how it was checked."""
    return {
        "stage": cfg.stage.name,
        "experiment": cfg.experiment_name,
        "source_checkpoint": source["source"],
        "source_step": source.get("step"),
        "config_sha256": config_hash(cfg),
        "dtype": dtype,
        "verified": bool(comparisons),
        "verification": [str(c) for c in comparisons],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
