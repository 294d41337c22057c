"""ZeRO checkpoint -> consolidated fp32 safetensors, with DeepSpeed's own converter.

``divot-export zero-to-fp32 CKPT OUT`` accepts what users have at hand:

* a training run's output folder or its ``checkpoints/`` folder (the newest complete
  checkpoint is taken, found by scanning -- ``checkpoints/latest`` names the same one);
* one ``checkpoints/step_*`` folder (our layout: DeepSpeed tag ``engine``);
* any DeepSpeed checkpoint folder with a ``latest`` tag file (``global_step*`` tags).

Before converting, the checkpoint is checked for completeness: a folder still named
``.tmp-step_*`` (a save that never finished), a missing model-states file or fewer
optimizer partitions than the run had ranks are refused with a message saying which
complete checkpoint to use instead. DeepSpeed's converter then reassembles the ZeRO-2 or
ZeRO-3 fp32 partitions lazily and writes one shard at a time, so the model is never held
twice in memory. Output is written to ``OUT.tmp`` and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from divot_llm.config.loading import RESOLVED_CONFIG_NAME as CONFIG_FILE
from divot_llm.layout import CHECKPOINTS_DIR, ENGINE_TAG, EXPORT_INFO, LATEST, TMP_PREFIX, TRAINER_STATE
from divot_llm.train.checkpoint import (
    OPTIM_STATES,
    CheckpointError,
    checkpoint_problems,
    describe_problems,
    engine_problems,
    latest_checkpoint,
    step_checkpoints,
)

# What DeepSpeed's converter writes (with safe_serialization): one file, or shards + index.
FP32_WEIGHTS = "model.safetensors"
FP32_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class ZeroCheckpoint:
    """A complete DeepSpeed checkpoint: ``dir/tag/`` holds the engine files."""

    dir: Path
    tag: str
    world_size: int
    zero_stage: int
    step: int | None  # optimizer step for our checkpoints, None for foreign ones

    @property
    def engine_dir(self) -> Path:
        return self.dir / self.tag

    @property
    def config_file(self) -> Path | None:
        """The run's resolved config (our checkpoints carry one)."""
        path = self.dir / CONFIG_FILE
        return path if path.is_file() else None


def resolve_checkpoint(path: str | os.PathLike) -> ZeroCheckpoint:
    """The complete checkpoint that ``path`` names (see the module docstring).

    Raises:
        CheckpointError: nothing complete there, with what to use instead.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.name.startswith(TMP_PREFIX):
        raise CheckpointError(_half_written(path, path.parent))
    if (path / ENGINE_TAG).is_dir() or (path / TRAINER_STATE).is_file():
        return _checked(path, ENGINE_TAG)
    for root in (path / CHECKPOINTS_DIR, path):
        found = latest_checkpoint(root)
        if found is not None:
            return _checked(found.path, ENGINE_TAG)
        if step_checkpoints(root):  # none complete: say what the newest lacks
            return _checked(step_checkpoints(root)[-1].path, ENGINE_TAG)
        if any(root.glob(f"{TMP_PREFIX}*")):
            raise CheckpointError(_half_written(next(root.glob(f"{TMP_PREFIX}*")), root))
    if (path / LATEST).is_file():  # a plain DeepSpeed checkpoint folder
        return _checked(path, (path / LATEST).read_text().strip())
    raise CheckpointError(
        f"no DeepSpeed checkpoint in {path}: expected a run folder, its checkpoints/ folder, "
        "a checkpoints/step_* folder or a folder with a 'latest' tag file"
    )


def _half_written(tmp: Path, root: Path) -> str:
    found = latest_checkpoint(root)
    instead = f"; the newest complete one is {found.path}" if found else "; there is no complete one"
    return f"{tmp} is a half-written checkpoint (its save never finished){instead}"


def _checked(ckpt_dir: Path, tag: str) -> ZeroCheckpoint:
    """``ckpt_dir`` if complete: ours (tag ``engine``) by the trainer's own completeness
    check (``checkpoint_problems``), a foreign one by its engine files alone."""
    engine = ckpt_dir / tag
    ours = tag == ENGINE_TAG
    problems = checkpoint_problems(ckpt_dir) if ours else engine_problems(engine)
    if problems:
        found = latest_checkpoint(ckpt_dir.parent) if ours else None
        instead = f"; the newest complete one is {found.path}" if found else ""
        raise CheckpointError(describe_problems(ckpt_dir, problems) + instead)
    names = [p.name for p in engine.iterdir()]
    state = _trainer_state(ckpt_dir)
    world = int(state["world_size"]) if state else sum(1 for n in names if OPTIM_STATES.match(n))
    return ZeroCheckpoint(
        dir=ckpt_dir,
        tag=tag,
        world_size=world,
        zero_stage=_zero_stage(engine, names),
        step=state.get("step") if state else None,  # an int: checkpoint_problems checked it
    )


def _trainer_state(ckpt_dir: Path) -> dict | None:
    path = ckpt_dir / TRAINER_STATE
    return json.loads(path.read_text()) if path.is_file() else None


def _zero_stage(engine: Path, names: list[str]) -> int:
    # ZeRO-3 writes one model-states file per rank (zero_pp_rank_*_mp_rank_00_model_states.pt).
    return 3 if any(n.startswith("zero_pp_rank_") and n.endswith("_model_states.pt") for n in names) else 2


def zero_to_fp32(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_shard_size: str = "5GB",
    overwrite: bool = False,
) -> Path:
    """Consolidate a ZeRO checkpoint into fp32 safetensors shards under ``out_dir``.

    Writes ``model.safetensors`` (or shards + ``model.safetensors.index.json``) with the
    checkpoint's parameters under the model's own names (our checkpoints hold the
    trainable ones: LoRA, projections, norms, embeddings), plus the run's ``config.yaml``
    when the checkpoint has one and ``export.json`` (source, tag, ZeRO stage, ranks, step).

    Raises:
        CheckpointError: no complete checkpoint at ``checkpoint``.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

    ckpt = resolve_checkpoint(checkpoint)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # Frozen parameters are excluded: ours never stores them (the base model comes from
    # its own files), and a foreign checkpoint's frozen base would dwarf the trained part.
    convert_zero_checkpoint_to_fp32_state_dict(
        str(ckpt.dir),
        str(tmp),
        max_shard_size=max_shard_size,
        safe_serialization=True,
        tag=ckpt.tag,
        exclude_frozen_parameters=True,
    )
    if ckpt.config_file is not None:
        shutil.copyfile(ckpt.config_file, tmp / CONFIG_FILE)
    info = {
        "source": str(ckpt.dir.resolve()),
        "tag": ckpt.tag,
        "zero_stage": ckpt.zero_stage,
        "world_size": ckpt.world_size,
        "step": ckpt.step,
    }
    (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def read_fp32_export(export_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``zero_to_fp32`` output folder (one file or sharded)."""
    folder = Path(export_dir)
    index = folder / FP32_INDEX
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [FP32_WEIGHTS]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(folder / name))
    return state


def is_fp32_export(path: str | os.PathLike) -> bool:
    path = Path(path)
    return (path / EXPORT_INFO).is_file() and (
        (path / FP32_WEIGHTS).is_file() or (path / FP32_INDEX).is_file()
    )
