"""Local paths, checked before anything is built.

A model folder that does not exist, or a training run folder where a release belongs,
otherwise fails deep inside transformers ("Repo id must be in the form ...") after a
minute of start-up on every rank. Here it is one line naming the path and where it came
from::

    no such file or directory: /ckpt/mistral (model.llm.path)
    /runs/pretrain is a training run folder, not a release: make a release with
        divot-merge --checkpoint /runs/pretrain --out REL (stage.init_from)

Which config fields are local paths, and of which kind, is declared in the schema
(``checked(path=PathKind...)`` in schema.py); which of them a command reads is said here
(``model_reads``), by the training stage (``divot_llm.train.stages.training_reads``) or by
the command (inference). Null values mean "not used" (random init, no cache) and are never
checked.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from omegaconf import MISSING, OmegaConf

from divot_llm.config.loading import ConfigError, config_node, schema_nodes
from divot_llm.config.schema import CHECK, DivotConfig, PathKind
from divot_llm.layout import (
    AGENT_DIR,
    CHECKPOINTS_DIR,
    DETOKENIZER_CONFIG,
    DETOKENIZER_DIR,
    ENGINE_TAG,
    EXPORT_INFO,
    LATEST,
    LLM_DIR,
    TRAINER_STATE,
)

HF_CONFIG = "config.json"  # what transformers' from_pretrained reads first
# What folder_kind recognises.
RELEASE = "a release"
RUN = "a training run folder"
CHECKPOINT = "a training checkpoint"
FP32_EXPORT = "a divot-export zero-to-fp32 output"
TRAINING_OUTPUTS = (RUN, CHECKPOINT, FP32_EXPORT)


class PathError(ConfigError):
    """A configured or given local path that is missing or not what it must be."""


def check_path(path: str | os.PathLike, kind: PathKind, source: str) -> Path:
    """``path`` as a ``Path`` if it exists and is a ``kind``.

    Args:
        source: where the path came from, for the message: a config key
            (``model.llm.path``) or a command-line argument (``--release``).

    Raises:
        PathError: one sentence naming the path, ``source`` and what is wrong.
    """
    problem = path_problem(path, kind, source)
    if problem:
        raise PathError(problem)
    return Path(path)


def path_problem(path: str | os.PathLike, kind: PathKind, source: str) -> str | None:
    """Why ``path`` is not a ``kind`` (see ``check_path``), or None."""
    where = _where(path, source)
    if not str(path):
        return f"empty path {where}"
    try:
        info = os.stat(path)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        return _unreachable(path, exc, where)
    is_dir = stat.S_ISDIR(info.st_mode)
    if kind == PathKind.file and is_dir:
        return f"{path} is a folder, expected {kind.value} {where}"
    if kind not in (PathKind.file, PathKind.file_or_folder) and not is_dir:
        return f"{path} is a file, expected {kind.value} {where}"
    if not os.access(path, os.R_OK | (os.X_OK if is_dir else 0)):
        return f"permission denied: {path} is not readable {where}"
    return _layout_problem(Path(path), kind, source, where) if is_dir else None


def _where(path: str | os.PathLike, source: str) -> str:
    relative = "" if os.path.isabs(path) else f", relative to {os.getcwd()}"
    return f"({source}{relative})"


def _unreachable(path: str | os.PathLike, exc: Exception, where: str) -> str:
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT and os.path.islink(path):
        return f"broken symbolic link: {path} -> {os.readlink(path)} {where}"
    if code in (errno.ENOENT, errno.ENOTDIR):
        home = " (a leading ~ is not expanded: write the full path)" if str(path).startswith("~") else ""
        return f"no such file or directory: {path} {where}{home}"
    if code == errno.EACCES:
        return f"permission denied: {path} {where}"
    reason = getattr(exc, "strerror", None) or str(exc)
    return f"{path!r} cannot be used: {reason} {where}"


def _layout_problem(folder: Path, kind: PathKind, source: str, where: str) -> str | None:
    """What is wrong with a folder given as ``kind``, saying what it is instead (a
    release, a training run, ...) and what to give."""
    found = folder_kind(folder)
    if kind == PathKind.release and found != RELEASE:
        return _training_output_advice(folder, found, "a release", where) or _not_a_release(folder, where)
    if kind == PathKind.hf_model and not (folder / HF_CONFIG).is_file():
        if found == RELEASE:
            return f"{folder} is a release; {source} takes its llm/ folder: {folder / LLM_DIR} {where}"
        return _training_output_advice(folder, found, "a model folder", where) or (
            f"{folder} has no {HF_CONFIG}: not a Hugging Face model folder {where}"
        )
    if kind == PathKind.detokenizer and not (folder / DETOKENIZER_CONFIG).is_file():
        inside = folder / DETOKENIZER_DIR
        if (inside / DETOKENIZER_CONFIG).is_file():
            return f"{folder} holds a saved de-tokenizer in a subfolder: use {inside} {where}"
        if found in TRAINING_OUTPUTS:
            return (
                f"{folder} is {found}, not a saved de-tokenizer: export one with "
                f"divot-export detokenizer {folder} OUT and use OUT/detokenizer {where}"
            )
        return f"{folder} is not a saved de-tokenizer: it has no {DETOKENIZER_CONFIG} {where}"
    if kind == PathKind.checkpoint and found == RELEASE:
        return (
            f"{folder} is a release (divot-merge output), not a training checkpoint: give the run "
            f"folder, one of its checkpoints/step_* folders or a divot-export zero-to-fp32 output {where}"
        )
    return None


def _training_output_advice(folder: Path, found: str | None, expected: str, where: str) -> str | None:
    if found not in TRAINING_OUTPUTS:
        return None
    use = " and use REL/llm" if expected == "a model folder" else ""
    return (
        f"{folder} is {found}, not {expected}: make a release with "
        f"divot-merge --checkpoint {folder} --out REL{use} {where}"
    )


def _not_a_release(folder: Path, where: str) -> str:
    if (folder / HF_CONFIG).is_file():
        return (
            f"{folder} is a Hugging Face model folder, not a release (llm/ + agent/); if it is a "
            f"release's llm/ folder, give its parent {folder.parent} {where}"
        )
    lacking = " and ".join(f"{name}/" for name in (LLM_DIR, AGENT_DIR) if not (folder / name).is_dir())
    return f"{folder} is not a release: it has no {lacking} (divot-merge writes a release) {where}"


def folder_kind(folder: str | os.PathLike) -> str | None:
    """What our tools wrote into ``folder``: ``RELEASE`` (llm/ + agent/), ``RUN``,
    ``CHECKPOINT`` (a checkpoints/ or step_* folder), ``FP32_EXPORT``, or None."""
    folder = Path(folder)
    if (folder / LLM_DIR).is_dir() and (folder / AGENT_DIR).is_dir():
        return RELEASE
    if (folder / CHECKPOINTS_DIR).is_dir():
        return RUN
    if any((folder / name).exists() for name in (ENGINE_TAG, TRAINER_STATE, LATEST)):
        return CHECKPOINT
    if (folder / EXPORT_INFO).is_file():
        return FP32_EXPORT
    return None


# ------------------------------------------------------------------ paths of a config


def config_paths(cfg: DivotConfig, under: Sequence[str]) -> list[tuple[str, str, PathKind]]:
    """(key, path, kind) of every local path set in ``cfg`` at or below one of the keys
    ``under`` (``"video_tokenizer"``, ``"model.llm.path"``); null and ``???`` values are
    left out."""
    found = []
    for key, node, schema in schema_nodes(config_node(cfg), ""):
        for field in dataclasses.fields(schema):
            check = field.metadata.get(CHECK)
            full = f"{key}.{field.name}" if key else field.name
            if check is None or check.path is None or not _within(full, under):
                continue
            if field.name not in node or OmegaConf.is_missing(node, field.name):
                continue
            value = node[field.name]
            if value is not None:
                found.append((full, str(value), check.path))
    return found


def _within(key: str, under: Sequence[str]) -> bool:
    return any(key == prefix or key.startswith(prefix + ".") for prefix in under)


def check_config_paths(cfg: DivotConfig, under: Sequence[str]) -> None:
    """Check every local path of ``cfg`` at or below the keys ``under``.

    Raises:
        PathError: every problem, one line each, naming the path and its key.
    """
    problems = [p for key, path, kind in config_paths(cfg, under) if (p := path_problem(path, kind, key))]
    if problems:
        raise PathError("\n  ".join(problems))


def model_reads(cfg: DivotConfig) -> list[str]:
    """The config keys whose paths building an LLM stage's models reads (training and
    ``divot-merge``): the text and video tokenizers, and the LLM -- from the release the
    stage starts from (``stage.init_from``/llm) or else ``model.llm.path``."""
    llm = "stage.init_from" if cfg.stage.init_from not in (None, MISSING) else "model.llm.path"
    return ["model.tokenizer_path", "video_tokenizer", llm]
