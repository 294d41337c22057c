"""Training checkpoints: atomic, complete, resumable.

Layout under ``<output_dir>/checkpoints/``::

    step_00002000/
      engine/                 DeepSpeed: module (trainable tensors only), ZeRO optimizer
                              partitions (one file per rank), LR scheduler, engine step
      latest                  DeepSpeed's tag file ("engine"), for its zero_to_fp32.py
      zero_to_fp32.py         DeepSpeed's converter, copied by DeepSpeed
      trainer_state.json      step, world size, counters (rank 0)
      rank_00000.json ...     per rank: data-stream state, python/numpy RNG states
      rank_00000_rng.pt ...   per rank: torch CPU (+ CUDA) RNG states
      config.yaml             the resolved config of the run
    latest                    name of the newest complete checkpoint
    .tmp-step_00004000/       a write in progress (or one killed mid-way): never resumed

A checkpoint is written into ``.tmp-<name>`` by all ranks and renamed by rank 0 only
after every rank has finished writing (a barrier), and ``latest`` is replaced only after
the rename; a run killed at any point leaves the previous complete checkpoint as the one
``resume=auto`` picks. The layout assumes a file system shared by all nodes.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from divot_llm.train import distributed

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
ENGINE_TAG = "engine"
TRAINER_STATE = "trainer_state.json"
TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _rank_file(rank: int, suffix: str) -> str:
    return f"rank_{rank:05d}{suffix}"


# ------------------------------------------------------------------------ RNG states


def rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(JSON-able python/numpy states, torch tensors) of this process's generators."""
    np_state = np.random.get_state()
    plain = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *[float(x) if isinstance(x, float) else x for x in np_state[2:]],
        ],
    }
    tensors: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.cuda.get_rng_state()
    return plain, tensors


def set_rng_state(plain: dict[str, Any], tensors: dict[str, Any]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])


# ------------------------------------------------------------------------ finding


@dataclass(frozen=True)
class Found:
    path: Path
    step: int


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def complete_checkpoints(root: Path) -> list[Found]:
    """Complete checkpoints under ``root``, oldest first (temp dirs never count)."""
    if not root.is_dir():
        return []
    found = [
        Found(p, int(m.group(1))) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))
    ]
    return sorted(found, key=lambda f: f.step)


def latest_checkpoint(root: Path) -> Found | None:
    """The newest complete checkpoint under ``root``.

    Every ``step_*`` directory is complete by construction (it only gets its name once
    all ranks have written), so scanning is authoritative; the ``latest`` file is kept
    for people and external tools, and a run killed between the rename and the pointer
    update still resumes from the newest checkpoint.
    """
    done = complete_checkpoints(root)
    return done[-1] if done else None


def resolve_resume(resume: str, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint directory to resume from, or None for a fresh start.

    Args:
        resume: ``auto`` (the latest complete checkpoint of this run, if any), ``none``,
            or a path: a ``step_*`` checkpoint, or another run's output/checkpoints dir.

    Raises:
        FileNotFoundError: an explicit path without a complete checkpoint.
        FileExistsError: ``none`` while this run already has checkpoints (they would be
            overwritten); pick another ``train.output_dir`` or ``resume=auto``.
    """
    root = checkpoints_root(output_dir)
    if resume == "none":
        if complete_checkpoints(root):
            raise FileExistsError(
                f"{root} already holds checkpoints; use train.resume=auto to continue that run or "
                "set a new train.output_dir"
            )
        return None
    if resume == "auto":
        found = latest_checkpoint(root)
        return found.path if found else None
    path = Path(resume)
    if _STEP_DIR.match(path.name) and (path / TRAINER_STATE).is_file():
        return path
    for candidate in (path, path / CHECKPOINTS_DIR):
        found = latest_checkpoint(candidate)
        if found:
            return found.path
    raise FileNotFoundError(f"train.resume={resume}: no complete checkpoint there")


# ------------------------------------------------------------------------ saving


class CheckpointWriter:
    """Writes and prunes the checkpoints of one run (every rank holds one).

    Args:
        output_dir: The run's output folder.
        rank: This process's rank; rank 0 renames, points ``latest`` and prunes.
        keep_last: Complete checkpoints to keep (older ones are deleted); <= 0 keeps all.
    """

    def __init__(self, output_dir: str | os.PathLike, rank: int, keep_last: int):
        self.root = checkpoints_root(output_dir)
        self.rank = rank
        self.keep_last = keep_last

    def remove_stale_temp_dirs(self) -> None:
        """Delete leftovers of writes that were killed (rank 0; call before training)."""
        if self.rank == 0 and self.root.is_dir():
            for path in self.root.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(path, ignore_errors=True)
        distributed.barrier()

    def save(
        self,
        engine: Any,
        step: int,
        rank_state: dict[str, Any],
        trainer_state: dict[str, Any],
        config_yaml: str,
    ) -> Path:
        """Write the checkpoint of ``step`` (collective: every rank must call it).

        Args:
            engine: The DeepSpeed engine (module, optimizer, scheduler).
            step: Optimizer updates done.
            rank_state: This rank's JSON-able state (data stream, counters).
            trainer_state: Run-wide JSON-able state (rank 0 writes it).
            config_yaml: The resolved config.

        Returns:
            The complete checkpoint's directory.
        """
        name = step_dir_name(step)
        tmp, final = self.root / f"{TMP_PREFIX}{name}", self.root / name
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        distributed.barrier()

        # Frozen weights (the base LLM) are excluded: they come from the model config on
        # resume, and would make every checkpoint the size of the base model.
        engine.save_checkpoint(str(tmp), tag=ENGINE_TAG, exclude_frozen_parameters=True)
        plain_rng, tensor_rng = rng_state()
        _write_json(tmp / _rank_file(self.rank, ".json"), {**rank_state, "rng": plain_rng})
        torch.save(tensor_rng, tmp / _rank_file(self.rank, "_rng.pt"))
        if self.rank == 0:
            _write_json(tmp / TRAINER_STATE, trainer_state)
            (tmp / "config.yaml").write_text(config_yaml)
        distributed.barrier()  # every rank's files are written

        if self.rank == 0:
            if final.exists():  # a checkpoint of the same step from a run resumed before it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _write_text_atomic(self.root / LATEST, name)
            self._prune(keep=final)
        distributed.barrier()
        return final

    def _prune(self, keep: Path) -> None:
        if self.keep_last <= 0:
            return
        done = complete_checkpoints(self.root)
        for old in done[: -self.keep_last]:
            if old.path != keep:
                shutil.rmtree(old.path, ignore_errors=True)


# ------------------------------------------------------------------------ loading


def load(engine: Any, path: Path, rank: int, world_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the engine (weights, optimizer, scheduler) and this rank's RNG states.

    Returns:
        (trainer_state, rank_state): what ``save`` was given; the rank state's data-stream
        entry is for the caller's loader.

    Raises:
        ValueError: the checkpoint was written by a different number of ranks (ZeRO
            partitions and per-rank data streams do not map onto another world size).
    """
    trainer_state = json.loads((path / TRAINER_STATE).read_text())
    if trainer_state["world_size"] != world_size:
        raise ValueError(
            f"{path} was written by {trainer_state['world_size']} ranks; resuming it needs the same "
            f"number (now {world_size})"
        )
    load_path, _ = engine.load_checkpoint(
        str(path),
        tag=ENGINE_TAG,
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the engine state in {path / ENGINE_TAG}")
    rank_state = json.loads((path / _rank_file(rank, ".json")).read_text())
    tensors = torch.load(path / _rank_file(rank, "_rng.pt"), map_location="cpu", weights_only=True)
    set_rng_state(rank_state.pop("rng"), tensors)
    return trainer_state, rank_state


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
