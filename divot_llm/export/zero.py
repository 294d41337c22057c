"""ZeRO checkpoint -> consolidated fp32 safetensors, with DeepSpeed's own converter.

``divot-export zero-to-fp32 CKPT OUT`` accepts what users have at hand:

* a training run's output folder or its ``checkpoints/`` folder (the newest complete
  checkpoint is taken, found by scanning -- ``checkpoints/latest`` names the same one);
* one ``checkpoints/step_*`` folder (our layout: DeepSpeed tag ``engine``);
* any DeepSpeed checkpoint folder with a ``latest`` tag file (``global_step*`` tags).

Before converting, the checkpoint is checked for completeness: a folder still named
``.tmp-step_*`` (a save that never finished), a missing model-states file or fewer
optimizer partitions than the run had ranks are refused with a message saying which
complete checkpoint to use instead. Output is written to ``OUT.tmp`` and renamed when
complete.

ZeRO-1/2 checkpoints are converted here, streaming: each parameter's values are copied
from the ranks' memory-mapped fp32 partitions (the optimizer files) straight into the
safetensors file being written, and the partitions are re-mapped every
``STREAM_CHUNK_BYTES`` (mapped pages count in the resident set once read), so the peak
memory is about that chunk, whatever the model's size.
DeepSpeed's own converter (``deepspeed.utils.zero_to_fp32``, used for ZeRO-3, whose
lazy mode gathers one parameter at a time) first concatenates every rank's partition of
a ZeRO-2 checkpoint: about twice the exported size at its peak (``tools/bench/export.py``
measures both). Both write the same tensors, shards and index.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from collections.abc import Iterator
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
# Partition bytes read through one mapping before it is dropped (its pages leave the resident set).
STREAM_CHUNK_BYTES = 64 * 2**20
SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}  # fmt: skip


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
    streaming: bool = True,
) -> Path:
    """Consolidate a ZeRO checkpoint into fp32 safetensors shards under ``out_dir``.

    Writes ``model.safetensors`` (or shards + ``model.safetensors.index.json``) with the
    checkpoint's parameters under the model's own names (our checkpoints hold the
    trainable ones: LoRA, projections, norms, embeddings), plus the run's ``config.yaml``
    when the checkpoint has one and ``export.json`` (source, tag, ZeRO stage, ranks, step).
    ``streaming=False`` uses DeepSpeed's converter for ZeRO-1/2 too (see the module
    docstring; the tests compare the two).

    Raises:
        CheckpointError: no complete checkpoint at ``checkpoint``.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    ckpt = resolve_checkpoint(checkpoint)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if streaming and ckpt.zero_stage <= 2:
        stream_zero2_to_fp32(ckpt.engine_dir, tmp, max_shard_size)
    else:
        from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict

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


# ------------------------------------------------------------------ streaming ZeRO-1/2


@dataclass(frozen=True)
class _Slice:
    """Where one parameter lies in its group's flat fp32 vector (the ranks' partitions of
    the group, concatenated in rank order)."""

    group: int
    start: int
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class _Partitions:
    """Every rank's fp32 partition of every parameter group, memory-mapped from the
    optimizer files and dropped again after ``STREAM_CHUNK_BYTES`` have been read."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._mapped: list[list[torch.Tensor]] | None = None  # [rank][group] (n,) fp32
        self._read = 0

    def ranks(self) -> list[list[torch.Tensor]]:
        if self._mapped is None:
            self._mapped = [_fp32_partitions(f) for f in self.files]
        return self._mapped

    def pieces(self, where: _Slice) -> Iterator[torch.Tensor]:
        """One parameter's values in order, as 1-D pieces of at most a quarter chunk (a
        parameter may span rank boundaries; a mapping is dropped between two pieces)."""
        position, end = where.start, where.start + where.numel
        most = STREAM_CHUNK_BYTES // 4 // 4  # fp32 values
        while position < end:
            base = 0
            for groups in self.ranks():
                part = groups[where.group]
                if position < base + part.numel():
                    break
                base += part.numel()
            count = min(end, base + part.numel(), position + most) - position
            yield part[position - base : position - base + count]
            position += count
            self._read += count * 4
            if self._read >= STREAM_CHUNK_BYTES:
                part = groups = None  # a mapping closes with its last tensor
                self._mapped, self._read = None, 0


def load_deepspeed_file(path: Path) -> dict:
    """A DeepSpeed checkpoint file, memory-mapped, with ``weights_only=True``: only tensors,
    plain containers and the few DeepSpeed classes its files hold are unpickled (a
    downloaded checkpoint cannot run code)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _optimizer_state(path: Path) -> dict:
    """A rank's ZeRO optimizer state, memory-mapped (nothing is read until used)."""
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT

    return load_deepspeed_file(path)[OPTIMIZER_STATE_DICT]


def _fp32_partitions(path: Path) -> list[torch.Tensor]:
    """A rank's fp32 partition of each parameter group, memory-mapped."""
    from deepspeed.checkpoint.constants import SINGLE_PARTITION_OF_FP32_GROUPS

    return _optimizer_state(path)[SINGLE_PARTITION_OF_FP32_GROUPS]


def _zero2_layout(engine_dir: Path) -> tuple[dict[str, torch.Tensor | _Slice], list[Path]]:
    """What the export holds, in DeepSpeed's converter's order -- the buffers (as tensors,
    floating ones in fp32), then each group's trainable parameters (as slices), then
    shared names -- and the ranks' optimizer files.

    Raises:
        CheckpointError: not a ZeRO-1/2 checkpoint, or partitions that do not add up.
    """
    from deepspeed.checkpoint.constants import (
        BUFFER_NAMES,
        PARAM_ALIGNMENT_PADDINGS,
        PARAM_SHAPES,
        PARTITION_COUNT,
        ZERO_STAGE,
    )
    from deepspeed.utils.zero_to_fp32 import get_model_state_files, get_optim_files

    files = [Path(f) for f in get_optim_files(str(engine_dir))]
    first = _optimizer_state(files[0])
    world = first[PARTITION_COUNT]
    world = max(world) if isinstance(world, list) else world
    if first[ZERO_STAGE] > 2 or world != len(files):
        raise CheckpointError(
            f"{engine_dir}: ZeRO stage {first[ZERO_STAGE]}, {world} partitions, {len(files)} files"
        )
    paddings = first.get(PARAM_ALIGNMENT_PADDINGS)
    group_numels = [0] * len(_fp32_partitions(files[0]))
    for path in files:
        for g, part in enumerate(_fp32_partitions(path)):
            group_numels[g] += part.numel()
    del first

    model = load_deepspeed_file(Path(get_model_state_files(str(engine_dir))[0]))
    layout: dict[str, torch.Tensor | _Slice] = {
        k: (v.float() if v.is_floating_point() else v).clone()
        for k, v in model["module"].items()
        if k in model[BUFFER_NAMES]
    }
    align = 2 * world  # ZeRO-2 pads each group's flat vector to a multiple of 2 x ranks
    for g, shapes in enumerate(model[PARAM_SHAPES]):
        offset = 0
        for i, (name, shape) in enumerate(shapes.items()):
            layout[name] = _Slice(g, offset, tuple(shape))
            offset += layout[name].numel + (paddings[g][i] if paddings is not None else 0)
        if math.ceil(offset / align) != math.ceil(group_numels[g] / align):
            raise CheckpointError(
                f"{engine_dir}: group {g} holds {group_numels[g]} values, its parameters {offset}"
            )
    for alias, source in model["shared_params"].items():
        if source in layout:
            layout[alias] = layout[source]
    return layout, files


def stream_zero2_to_fp32(engine_dir: Path, out_dir: Path, max_shard_size: str) -> None:
    """Write a ZeRO-1/2 checkpoint's trained tensors as fp32 safetensors shards (+ index),
    the same files as DeepSpeed's converter gives, one parameter at a time (module
    docstring)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    layout, files = _zero2_layout(engine_dir)
    # Sharding by sizes alone: empty tensors are never written to, so they take no memory.
    empty: dict[int, torch.Tensor] = {}
    sized = {
        name: empty.setdefault(id(where), torch.empty(where.shape) if isinstance(where, _Slice) else where)
        for name, where in layout.items()
    }
    split = split_torch_state_dict_into_shards(
        sized,
        filename_pattern=FP32_WEIGHTS.replace(".safetensors", "{suffix}.safetensors"),
        max_shard_size=max_shard_size,
    )
    del sized, empty
    out_dir.mkdir(parents=True)
    partitions = _Partitions(files)
    for shard, names in split.filename_to_tensors.items():
        _write_safetensors(out_dir / shard, {n: layout[n] for n in names}, partitions)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out_dir / FP32_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_safetensors(
    path: Path, tensors: dict[str, torch.Tensor | _Slice], partitions: _Partitions
) -> None:
    """A safetensors file (header, then each tensor's bytes) written as it is read: the
    bytes ``safetensors.torch.save_file`` writes when the tensors share one dtype (it
    orders them by dtype, then name)."""
    header: dict[str, dict] = {"__metadata__": {"format": "pt"}}  # first, as safetensors writes it
    offset = 0
    for name, where in sorted(tensors.items()):
        dtype = torch.float32 if isinstance(where, _Slice) else where.dtype
        size = math.prod(where.shape) * dtype.itemsize
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(where.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, where in sorted(tensors.items()):
            pieces = partitions.pieces(where) if isinstance(where, _Slice) else [where]
            for piece in pieces:
                f.write(memoryview(piece.contiguous().reshape(-1).view(torch.uint8).numpy()))
