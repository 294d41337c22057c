"""Training checkpoints: atomic, complete, resumable.

Layout under ``<output_dir>/checkpoints/``::

    step_00002000/
      engine/                 DeepSpeed: module (trainable tensors only), ZeRO optimizer
                              partitions (one file per rank), LR scheduler, engine step
      engine_<name>/          the same for each of the stage's extra engines (stage=vidtok:
                              engine_disc/, the discriminator), listed in trainer_state.json
      latest                  DeepSpeed's tag file ("engine"), for its zero_to_fp32.py
      zero_to_fp32.py         DeepSpeed's converter, copied by DeepSpeed
      trainer_state.json      step, world size, counters (rank 0)
      rank_00000.json ...     per rank: data-stream state, python/numpy RNG states
      rank_00000_rng.pt ...   per rank: torch CPU (+ CUDA) RNG states
      config.yaml             the resolved config of the run
      ema.safetensors         with stage.ema.enabled: the weights' moving average (rank 0)
    latest                    name of the newest complete checkpoint
    .tmp-step_00004000/       a write in progress (or one killed mid-way): never resumed

A checkpoint is written into ``.tmp-<name>`` by all ranks and renamed by rank 0 only
after every rank has finished writing (a barrier), and ``latest`` is replaced only after
the rename; a run killed at any point leaves the previous complete checkpoint as the one
``resume=auto`` picks. The layout assumes a file system shared by all nodes.

A ``step_*`` name alone does not make a checkpoint usable: a folder copied by hand, a
node's files lost or a quota hit can leave one without some rank's files. Completeness
(``checkpoint_problems``: the trainer state, the config, every rank's state and RNG
files, the engine's model states and every rank's ZeRO optimizer partition, none of them
empty) is checked before a resume and before an export (``divot_llm.export.zero``), by
this one function; ``resume=auto`` passes over incomplete checkpoints to the newest
complete one and says so (``choose_resume``).

Resuming also needs the checkpoint to fit the current config: ``config_differences``
compares the checkpoint's ``config.yaml`` with the run's on the keys that decide what the
weights and optimizer state are (``BOUND_SECTIONS``/``BOUND_KEYS``, less the keys in
``is_free_key``) and the resume refuses, naming them, when they differ.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import save_file

from divot_llm.config.loading import RESOLVED_CONFIG_NAME
from divot_llm.layout import CHECKPOINTS_DIR, EMA_FILE, ENGINE_TAG, LATEST, TMP_PREFIX, TRAINER_STATE
from divot_llm.train import distributed

_STEP_DIR = re.compile(r"^step_(\d+)$")
EXTRA_ENGINES = "extra_engines"  # trainer_state.json: names of the stage's extra engines (if any)
# DeepSpeed's engine files: model states (ZeRO-3: one per rank, else one per model-parallel
# rank) and the optimizer's partitions, one per data-parallel rank ("bf16_" with its
# bf16 optimizer).
MODEL_STATES = re.compile(r"^(zero_pp_rank_(\d+)_)?mp_rank_\d+_model_states\.pt$")
OPTIM_STATES = re.compile(r"^(bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def engine_tag(name: str) -> str:
    """The DeepSpeed tag (folder) of a stage's extra engine ``name``."""
    return f"{ENGINE_TAG}_{name}"


_RANK_SUFFIXES = (".json", "_rng.pt")  # data stream + python/numpy RNG, torch RNG
_RANK_FILE = re.compile(r"^rank_(\d+)(\.json|_rng\.pt)$")


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


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for (missing, half-written, incomplete),
    or one that does not fit the current config."""


@dataclass(frozen=True)
class CheckpointRef:
    """A ``step_*`` checkpoint folder and its optimizer step."""

    path: Path
    step: int


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def step_checkpoints(root: Path) -> list[CheckpointRef]:
    """Every ``step_*`` folder under ``root``, complete or not, oldest first (temp dirs
    never count)."""
    if not root.is_dir():
        return []
    found = [
        CheckpointRef(p, int(m.group(1)))
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return sorted(found, key=lambda f: f.step)


def complete_checkpoints(root: Path) -> list[CheckpointRef]:
    """The complete checkpoints under ``root`` (see ``checkpoint_problems``), oldest first."""
    return [f for f in step_checkpoints(root) if not checkpoint_problems(f.path)]


def latest_checkpoint(root: Path) -> CheckpointRef | None:
    """The newest complete checkpoint under ``root``.

    Scanning is authoritative: the ``latest`` file is kept for people and external tools,
    and a run killed between the rename and the pointer update still resumes from the
    newest checkpoint.
    """
    for found in reversed(step_checkpoints(root)):
        if not checkpoint_problems(found.path):
            return found
    return None


# ------------------------------------------------------------------------ completeness


def checkpoint_problems(ckpt_dir: Path) -> list[str]:
    """What keeps ``ckpt_dir`` (one of our ``step_*`` checkpoints) from being resumed or
    exported; empty when it is complete.

    Complete: ``trainer_state.json`` and ``config.yaml`` readable, and for every rank of
    the world that wrote it ``rank_*.json``, ``rank_*_rng.pt`` and the engine's optimizer
    partition (ZeRO-3: model states too), no file empty.
    """
    state = _read_mapping(ckpt_dir / TRAINER_STATE, json.loads)
    config = _read_mapping(ckpt_dir / RESOLVED_CONFIG_NAME, yaml.safe_load)
    problems = [reason for reason in (state, config) if isinstance(reason, str)]
    world = None
    extra: list[str] = []
    if isinstance(state, dict):
        world, step = state.get("world_size"), state.get("step")
        if type(step) is not int or step < 0:
            problems.append(f"{TRAINER_STATE} has no valid step ({step!r})")
        if type(world) is not int or world < 1:
            problems.append(f"{TRAINER_STATE} has no valid world_size ({world!r})")
            world = None
        extra = state.get(EXTRA_ENGINES, [])
        if not (isinstance(extra, list) and all(isinstance(name, str) for name in extra)):
            problems.append(f"{TRAINER_STATE} has no valid {EXTRA_ENGINES} ({extra!r})")
            extra = []
    if world is not None:
        problems += _missing_rank_files(ckpt_dir, world)
    zero_stage = _zero_stage_of(config) if isinstance(config, dict) else None
    if isinstance(config, dict) and ema_enabled(config) and not _size(ckpt_dir / EMA_FILE):
        problems.append(f"{EMA_FILE} is missing or empty (the run keeps an EMA: stage.ema.enabled)")
    for tag in (ENGINE_TAG, *map(engine_tag, extra)):
        problems += engine_problems(ckpt_dir / tag, world, zero_stage)
    return problems


def ema_enabled(config: dict) -> bool:
    """Whether a checkpoint's resolved config (plain data) keeps an EMA of the weights."""
    stage = config.get("stage")
    ema = stage.get("ema") if isinstance(stage, dict) else None
    return isinstance(ema, dict) and ema.get("enabled") is True


def engine_problems(
    engine_dir: Path, world_size: int | None = None, zero_stage: int | None = None
) -> list[str]:
    """What the DeepSpeed engine folder ``engine_dir`` lacks; empty when complete.

    Args:
        world_size: Ranks that wrote it; None (a foreign checkpoint): as many as the
            optimizer partitions found, which must then be ranks 0..n-1.
        zero_stage: From the run's config; stage 0 in fp32 keeps the optimizer state in
            the model states file (no partitions), stage 3 writes model states per rank.
    """
    if not engine_dir.is_dir():
        return [f"engine folder {engine_dir.name}/ is missing"]
    sizes = {p.name: _size(p) for p in engine_dir.iterdir()}
    names = [name for name, size in sizes.items() if size]
    problems = [f"{engine_dir.name}/{name} is empty" for name, size in sorted(sizes.items()) if size == 0]
    model_ranks = sorted(int(m.group(2)) for n in names if (m := MODEL_STATES.match(n)) and m.group(2))
    if not any(MODEL_STATES.match(n) for n in names):
        problems.append(f"{engine_dir.name}/: no *model_states.pt file")
    elif (
        (zero_stage == 3 or model_ranks)
        and world_size is not None
        and not _all_ranks(model_ranks, world_size)
    ):
        problems.append(
            f"{engine_dir.name}/: model states for ranks {_ranks(model_ranks)}, expected 0..{world_size - 1}"
        )
    optim_ranks = sorted(int(m.group(2)) for n in names if (m := OPTIM_STATES.match(n)))
    if world_size is None:
        expected = len(optim_ranks)  # a foreign checkpoint: at least no gap
    elif zero_stage == 0 and not optim_ranks:
        expected = 0
    else:
        expected = world_size
    if not _all_ranks(optim_ranks, expected):
        problems.append(
            f"{engine_dir.name}/: optimizer partitions for ranks {_ranks(optim_ranks)}, expected 0..{expected - 1}"
        )
    return problems


def describe_problems(ckpt_dir: Path, problems: list[str]) -> str:
    return f"{ckpt_dir} is incomplete: " + "; ".join(problems)


def _read_mapping(path: Path, parse) -> dict | str:
    """The mapping in ``path``, or a sentence saying why there is none."""
    if not _size(path):
        return f"{path.name} is missing or empty"
    try:
        value = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return f"{path.name} is unreadable ({type(exc).__name__})"
    return value if isinstance(value, dict) else f"{path.name} holds no mapping"


def _missing_rank_files(folder: Path, world: int) -> list[str]:
    """One line naming the first few absent or empty per-rank files of ranks 0..world-1
    (lazily: a corrupt world size must not make this loop for ever)."""
    present = {p.name for p in folder.iterdir() if _size(p)}
    wanted = (_rank_file(rank, suffix) for rank in range(world) for suffix in _RANK_SUFFIXES)
    shown = list(islice((name for name in wanted if name not in present), 6))
    if not shown:
        return []
    have = sum(
        1
        for name in present
        if (m := _RANK_FILE.match(name))
        and int(m.group(1)) < world
        and name == _rank_file(int(m.group(1)), m.group(2))
    )
    more = len(_RANK_SUFFIXES) * world - have - len(shown)
    return ["missing or empty: " + ", ".join(shown) + (f" and {more} more" if more > 0 else "")]


def _size(path: Path) -> int | None:
    """Size of the regular file ``path``; None when there is none."""
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def _all_ranks(ranks: list[int], world: int) -> bool:
    """``ranks`` (sorted) is exactly 0..world-1."""
    return len(ranks) == world and ranks == list(range(world))  # the length first: world may be corrupt


def _ranks(ranks: list[int]) -> str:
    return str(ranks) if len(ranks) <= 8 else f"[{ranks[0]}..{ranks[-1]}] ({len(ranks)} files)"


def _zero_stage_of(config: dict) -> int | None:
    deepspeed = config.get("deepspeed")
    stage = deepspeed.get("zero_stage") if isinstance(deepspeed, dict) else None
    return stage if type(stage) is int else None


# ------------------------------------------------------------------------ resuming


@dataclass(frozen=True)
class ResumeChoice:
    """Where a run starts: ``path`` (None: fresh), and the lines that say why."""

    path: Path | None
    notes: tuple[str, ...] = ()


def choose_resume(resume: str, output_dir: str | os.PathLike) -> ResumeChoice:
    """The checkpoint a run resumes from (read-only: it writes nothing).

    Args:
        resume: ``auto`` (the newest complete checkpoint of this run, passing over
            incomplete ones; none at all: a fresh start), ``none`` (a fresh start in a
            folder without checkpoints), or a path: one ``step_*`` checkpoint (it must be
            complete), or another run's output or checkpoints folder (its newest complete
            checkpoint).

    Raises:
        FileExistsError: ``none`` while this run's folder holds checkpoints (a fresh start
            would overwrite and prune them).
        CheckpointError: checkpoints exist but none is complete, or an explicit path has
            no complete checkpoint.
    """
    root = checkpoints_root(output_dir)
    if resume == "none":
        if step_checkpoints(root):
            raise FileExistsError(
                f"train.resume=none: {root} already holds checkpoints and a fresh start would overwrite "
                "them; use train.resume=auto to continue that run, or set a new train.output_dir"
            )
        return ResumeChoice(None, ("train.resume=none: starting fresh",))
    if resume == "auto":
        if not step_checkpoints(root):
            return ResumeChoice(None, (f"train.resume=auto: no checkpoint in {root}; starting fresh",))
        return _newest_complete(root, "train.resume=auto")
    path = Path(resume)
    if path.name.startswith(TMP_PREFIX):
        raise CheckpointError(f"train.resume={resume}: a half-written checkpoint (its save never finished)")
    if _STEP_DIR.match(path.name) and path.is_dir():
        problems = checkpoint_problems(path)
        if problems:
            raise CheckpointError(f"train.resume={resume}: " + describe_problems(path, problems))
        return ResumeChoice(path)
    for candidate in (path / CHECKPOINTS_DIR, path):
        if step_checkpoints(candidate):
            return _newest_complete(candidate, f"train.resume={resume}")
    raise CheckpointError(
        f"train.resume={resume}: no checkpoint there (expected a step_* checkpoint folder, a run's "
        "output folder or its checkpoints/ folder)"
    )


def _newest_complete(root: Path, setting: str) -> ResumeChoice:
    """The newest complete checkpoint under ``root`` (which holds some), with a note for
    every newer one passed over."""
    passed: list[str] = []
    for found in reversed(step_checkpoints(root)):
        problems = checkpoint_problems(found.path)
        if not problems:
            notes = [f"{setting}: passing over {reason}" for reason in passed]
            if passed:
                notes.append(f"{setting}: falling back to {found.path}, the newest complete checkpoint")
            return ResumeChoice(found.path, tuple(notes))
        passed.append(describe_problems(found.path, problems))
    raise CheckpointError(
        f"{setting}: {root} holds checkpoints but none is complete ({' / '.join(passed)}); restore the "
        "missing files, or start fresh with train.resume=none and a new train.output_dir"
    )


# ------------------------------------------------------------------------ config fit

# What a checkpoint's weights and optimizer state were made for: the models (their shapes,
# LoRA, which parts train), the stage, and the engine settings that lay out the optimizer
# state. Everything else -- train.* (max_steps, save/log/eval cadence, output_dir), optim.*
# values (lr, schedule, clipping), data.*, logging -- may change between a save and a
# resume (the data loader checks its own ranks x workers layout).
BOUND_SECTIONS = ("model", "video_tokenizer", "detokenizer", "stage")
BOUND_KEYS = ("deepspeed.zero_stage", "deepspeed.precision", "optim.no_decay_norms_and_biases")
# Inside the bound sections, how a step runs rather than what it trains.
RUNTIME_KEYS = frozenset(
    {
        "model.llm.attn_implementation",
        "model.llm.gradient_checkpointing",  # checkpoints saved before checkpoint_every
        "model.llm.checkpoint_every",
        "model.llm.compile",
        "model.lora.dropout",
        "model.lm_loss_scale",
        "model.gmm_loss_scale",
        "model.gmm.sample_var_scale",
        "model.code_head.temperature",
        "model.code_head.top_k",
        "model.code_head.cfg_scale",
        "detokenizer.gradient_checkpointing",
        "detokenizer.ddim_steps",
        "detokenizer.ddim_eta",
        "detokenizer.guidance_scale",
        "detokenizer.guidance_rescale",
        "stage.recon_clips",
        "stage.recon_steps",
    }
)


def is_free_key(key: str) -> bool:
    """A bound-section key that may still change on resume: a runtime setting, a path
    (files move between clusters; they must hold the same weights), or a value of the
    discriminator's optimizer (``stage.disc_optim``: free as ``optim``'s are, but for the
    parameter grouping, which lays out its state)."""
    leaf = key.rsplit(".", 1)[-1]
    if key.startswith("stage.disc_optim."):
        return leaf != "no_decay_norms_and_biases"
    return key in RUNTIME_KEYS or leaf == "path" or leaf.endswith(("_path", "init_from"))


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every bound key whose value differs (sorted)."""
    old, new = _flatten(saved), _flatten(current)
    keys = sorted(k for k in old.keys() | new.keys() if _is_bound(k) and not is_free_key(k))
    return [
        f"{key}: {_show(old.get(key, _ABSENT))} -> {_show(new.get(key, _ABSENT))}"
        for key in keys
        if old.get(key, _ABSENT) != new.get(key, _ABSENT)
    ]


def check_fits(ckpt_dir: Path, current: dict, world_size: int | None = None) -> None:
    """Refuse a checkpoint that cannot continue this run: written under a config whose
    bound keys differ from ``current`` (the run's resolved config, as plain data), or by
    another number of ranks (ZeRO partitions and per-rank data streams do not map onto
    another world size).

    Raises:
        CheckpointError: naming every differing key with both values, or both world sizes.
    """
    saved = _read_mapping(ckpt_dir / RESOLVED_CONFIG_NAME, yaml.safe_load)
    if isinstance(saved, str):
        raise CheckpointError(f"{ckpt_dir}: {saved}; cannot check that it fits the current config")
    differences = config_differences(saved, current)
    if differences:
        raise CheckpointError(
            f"{ckpt_dir} does not fit this run's config: its weights and optimizer state were made for "
            f"other values of {', '.join(d.split(':', 1)[0] for d in differences)} (checkpoint -> now: "
            f"{'; '.join(differences)}). Set them back to resume, or start a new run in another "
            "train.output_dir"
        )
    if world_size is not None:
        _check_world_size(json.loads((ckpt_dir / TRAINER_STATE).read_text()), ckpt_dir, world_size)


def _check_world_size(trainer_state: dict, ckpt_dir: Path, world_size: int) -> None:
    if trainer_state["world_size"] != world_size:
        raise CheckpointError(
            f"{ckpt_dir} was written by {trainer_state['world_size']} ranks; resuming it needs the same "
            f"number (now {world_size})"
        )


def _is_bound(key: str) -> bool:
    return key.split(".", 1)[0] in BOUND_SECTIONS or key in BOUND_KEYS


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> leaf value (lists stay whole: they are compared as one value)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        if isinstance(value, dict) and not value:
            flat[f"{prefix}.{key}" if prefix else str(key)] = value
    return flat


_ABSENT = object()  # a key only one of the two configs has


def _show(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
        rank0_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
        extra_engines: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step`` (collective: every rank must call it).

        Args:
            engine: The DeepSpeed engine (module, optimizer, scheduler).
            step: Optimizer updates done.
            rank_state: This rank's JSON-able state (data stream, counters).
            trainer_state: Run-wide JSON-able state (rank 0 writes it).
            config_yaml: The resolved config.
            rank0_tensors: file name -> tensors that rank 0 writes (safetensors) into the
                checkpoint with the rest, e.g. ``ema.safetensors``.
            extra_engines: the stage's other engines by name, each saved under its
                ``engine_tag`` (``trainer_state`` must list them: ``EXTRA_ENGINES``).

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
        for name, extra in (extra_engines or {}).items():  # "latest" keeps naming the main engine
            extra.save_checkpoint(
                str(tmp), tag=engine_tag(name), exclude_frozen_parameters=True, save_latest=False
            )
        plain_rng, tensor_rng = rng_state()
        _write_json(tmp / _rank_file(self.rank, ".json"), {**rank_state, "rng": plain_rng})
        torch.save(tensor_rng, tmp / _rank_file(self.rank, "_rng.pt"))
        if self.rank == 0:
            _write_json(tmp / TRAINER_STATE, trainer_state)
            (tmp / "config.yaml").write_text(config_yaml)
            for file_name, tensors in (rank0_tensors or {}).items():
                save_file(tensors, str(tmp / file_name))
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


def load(
    engine: Any, path: Path, rank: int, world_size: int, extra_engines: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore the engine (weights, optimizer, scheduler), the stage's ``extra_engines``
    (by name) and this rank's RNG states.

    Returns:
        (trainer_state, rank_state): what ``save`` was given; the rank state's data-stream
        entry is for the caller's loader.

    Raises:
        CheckpointError: the checkpoint was written by a different number of ranks (see
            ``check_fits``, which start-up calls before building anything).
    """
    trainer_state = json.loads((path / TRAINER_STATE).read_text())
    _check_world_size(trainer_state, path, world_size)
    extra_engines = extra_engines or {}
    saved = sorted(trainer_state.get(EXTRA_ENGINES, []))
    if saved != sorted(extra_engines):
        raise CheckpointError(f"{path} holds the extra engines {saved}, this run has {sorted(extra_engines)}")
    for tag, each in ((ENGINE_TAG, engine), *((engine_tag(n), e) for n, e in extra_engines.items())):
        load_path, _ = each.load_checkpoint(
            str(path),
            tag=tag,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the engine state in {path / tag}")
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
