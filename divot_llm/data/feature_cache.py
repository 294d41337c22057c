"""Precomputed video-tokenizer features: run the frozen tokenizer over a dataset once,
then train from the features instead of decoding and encoding frames every step.

Layout (one safetensors file per sample, keyed like the source sample):

    <cache>/cache.json                           what produced it (see ``CacheInfo``)
    <cache>/<source>/<sanitised key>.safetensors   "feats": (C, N, D) of the sample's clips,
                                                 in the encode dtype (bf16 on a GPU)
    <cache>/parts/part-RRRRR-of-WWWWW.json       what share R of a W-share build cached
                                                 (``BuildPart``), written when it is done
    <cache>/index.json                           the finished build: every share's counts
                                                 merged (``write_index``)

A build writes ``index.json`` last, once every share is done, so a cache without it is
unfinished (interrupted, or shares still running): ``check`` refuses it, and a run whose
sources the index does not list (a cache built for other sources).

Neither the parts nor the index list sample keys: a run finds a sample's file by its key
(``sample_file``), and at 10 M samples the keys alone would be hundreds of MB to gather
on one rank and to write. They hold per-group sample counts and the skip counts.

The clips cached are the ones the loader samples in epoch 0 (per-sample randomness is
seeded by data seed, key and epoch), so training from the cache sees exactly the
features training from frames would see in its first epoch -- and the same clips again
in later epochs (the price of caching: no new temporal crops).

A cache only fits the tokenizer and sampling settings that made it; ``check`` compares
them and names every mismatch. A run from a cache builds its tokenizer without the ViT
(``VideoTokenizer.for_cached_features``), so the tokenizer is fingerprinted in two parts:
config plus the weights after the ViT, which every run checks, and the ViT's weights,
checked by runs that hold it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from divot_llm.config.schema import DataConfig
from divot_llm.data.errors import MediaError

INFO_FILE = "cache.json"
INDEX_FILE = "index.json"
PARTS_DIR = "parts"
BUILT_COUNTS = ("written", "already_cached")  # a build's own counts; the others are skip reasons
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class CacheInfo:
    tokenizer_name: str
    tokenizer_fingerprint: str  # config (paths excluded) + a signature of the weights after the ViT
    data_seed: int
    frames_per_window: int
    fps: float
    frame_stride: int
    image_size: int
    tokens_per_clip: int  # N: the tokenizer's feature tokens per clip (not the LLM's, model.resampler)
    feature_dim: int
    encode_dtype: str  # features differ between fp32 and bf16 encoding; stored in it (older caches: fp32)
    # the ViT's weights; None where the run does not build it (from a cache: not compared)
    frame_encoder_fingerprint: str | None = None
    resize_kernel: str = "pil"  # data.resize_kernel: the frames' pixels (older caches: pil)


def tokenizer_fingerprint(tokenizer: torch.nn.Module, config: dict) -> str:
    """Identifies a tokenizer by what determines its features, apart from its frame
    encoder (``frame_encoder_fingerprint``): its config (without file paths, which differ
    between machines) and its other weights.

    The config is ``config`` as the tokenizer holds it (``tokenizer.config``): loading can
    fill in settings the composed config leaves null -- VidTok's latent statistics, stored
    in the folder ``pretrained_path`` names -- and they change the features too."""
    settings = config | asdict(tokenizer.config)
    frame_encoder = tokenizer.frame_encoder
    prefix = next((f"{name}." for name, m in tokenizer.named_modules() if m is frame_encoder), None)
    return component_fingerprint(
        settings,
        {k: v for k, v in tokenizer.state_dict().items() if prefix is None or not k.startswith(prefix)},
    )


def component_fingerprint(settings: dict, state_dict: dict[str, torch.Tensor]) -> str:
    """A signature of a frozen component (a tokenizer) by what determines its outputs: its
    settings without file paths (which differ between machines) and its weights."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps({k: v for k, v in settings.items() if not k.endswith("_path")}, sort_keys=True).encode()
    )
    _update_with_weights(digest, state_dict)
    return digest.hexdigest()[:20]


def frame_encoder_fingerprint(tokenizer: torch.nn.Module) -> str | None:
    """A signature of the frame encoder's weights (Divot's ViT); None when it has none built."""
    if tokenizer.frame_encoder is None:
        return None
    digest = hashlib.sha256()
    _update_with_weights(digest, tokenizer.frame_encoder.state_dict())
    return digest.hexdigest()[:20]


def _update_with_weights(digest, state_dict: dict[str, torch.Tensor]) -> None:
    """Sum and norm per tensor: cheap even for a ViT-H on the GPU."""
    for name, tensor in sorted(state_dict.items()):
        values = tensor.detach().double()
        digest.update(
            f"{name}:{tuple(tensor.shape)}:{values.sum().item():.10e}:{values.norm().item():.10e}".encode()
        )


def sample_file(cache_dir: Path, source: str, key: str) -> Path:
    """Where a sample's features live; keys like ``shard-00003.tar:vid-000001`` or
    ``ann.jsonl:17`` become safe file names."""
    return cache_dir / _UNSAFE.sub("_", source) / (_UNSAFE.sub("_", key) + ".safetensors")


class FeatureCache:
    """Read side of a cache directory."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        info_path = self.dir / INFO_FILE
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{info_path} not found: not a feature cache (build one with `divot-data features`)"
            )
        fields = json.loads(info_path.read_text())
        # caches written before the ViT was fingerprinted apart have a whole-tokenizer fingerprint
        self._whole_fingerprint = "frame_encoder_fingerprint" not in fields
        self.info = CacheInfo(**fields)

    def check(self, expected: CacheInfo, sources: dict[str, str] | None = None) -> None:
        """Raise ValueError naming every field where the cache differs from this run
        (fields the run does not know, None, are not compared), saying that its build has
        not finished (no ``index.json``) and how to finish it, or naming a source of the
        run's that the build did not cache. ``sources``: cache group -> the config key
        that names the source (``data.sources.x``), the groups this run reads."""
        self.check_fields(expected)
        index_path = self.dir / INDEX_FILE
        if not index_path.is_file():
            raise ValueError(
                f"feature cache {self.dir} has no {INDEX_FILE}: its build has not finished (it was "
                "interrupted, some of its --shard builds are still running, or it was written before "
                f"caches had an index). Run the same `divot-data features --out {self.dir} ...` command "
                "again: it skips every sample already cached, then writes the index."
            )
        cached = json.loads(index_path.read_text())["groups"]  # counts (older caches: key lists)
        missing = [key for group, key in (sources or {}).items() if group not in cached]
        if missing:
            raise ValueError(
                f"feature cache {self.dir} holds no sample of {', '.join(missing)}: it was built for "
                f"other sources (it has {', '.join(sorted(cached)) or 'none'}). Build it for this "
                f"config: `divot-data features --out {self.dir} -- <this run's overrides>` (samples "
                "already cached are skipped)."
            )

    def check_fields(self, expected: CacheInfo) -> None:
        """Raise ValueError naming every field where the cache differs from ``expected``."""
        got, want = asdict(self.info), asdict(expected)
        diffs = [
            f"{k}: cache {got[k]!r} != run {want[k]!r}"
            for k in want
            if want[k] is not None and got[k] != want[k]
        ]
        if self._whole_fingerprint and any(d.startswith("tokenizer_fingerprint") for d in diffs):
            diffs.append(
                "(this cache's fingerprint covers the ViT, as caches written before it was split: rebuild it)"
            )
        if diffs:
            raise ValueError(f"feature cache {self.dir} was made for a different setup: " + "; ".join(diffs))

    def load(self, source: str, key: str) -> torch.Tensor:
        """(C, N, D) features of a sample, in the dtype stored (the encode dtype; the model
        casts); FileNotFoundError if not cached, MediaError ``corrupt_cache_file`` if its
        file cannot be read."""
        path = sample_file(self.dir, source, key)
        if not path.is_file():
            raise FileNotFoundError(f"no cached features for {source} {key} ({path})")
        try:
            return load_file(path)["feats"]
        except Exception as exc:  # safetensors raises its own error types on a damaged file
            raise MediaError("corrupt_cache_file", f"{path}: {type(exc).__name__}: {exc}") from exc


def write_info(cache_dir: Path, info: CacheInfo) -> None:
    """(Every rank of a build writes it, the same: atomically, so none reads half of it.)"""
    write_json_atomic(cache_dir / INFO_FILE, asdict(info), indent=2)


def write_json_atomic(path: Path, obj: Any, indent: int | None = None) -> None:
    """Write ``obj`` as JSON so that ``path`` only ever holds a whole file, even with
    several processes writing it at once (each through a temporary file of its own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file its owner's alone (0600): give it the mode any file written
        # here gets, so that other users of a shared cache can read it
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "w") as file:
            file.write(json.dumps(obj, indent=indent, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class BuildPart:
    """What one share of a build (rank ``rank`` of ``world_size``) cached: how many samples
    of each cache group its share holds, written now or found cached, and its counts
    (``written``, ``already_cached`` and skip reasons)."""

    rank: int
    world_size: int
    groups: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def write(self, cache_dir: Path) -> Path:
        path = part_file(cache_dir, self.rank, self.world_size)
        write_json_atomic(path, asdict(self))
        return path

    @classmethod
    def read(cls, path: Path) -> BuildPart:
        fields = json.loads(path.read_text())
        # parts written before they held counts listed every key of their share
        groups = {g: len(n) if isinstance(n, list) else n for g, n in fields.pop("groups").items()}
        return cls(**fields, groups=groups)


def part_file(cache_dir: Path, rank: int, world_size: int) -> Path:
    return cache_dir / PARTS_DIR / f"part-{rank:05d}-of-{world_size:05d}.json"


def finished_parts(cache_dir: Path, world_size: int) -> list[BuildPart] | None:
    """Every share's part of a ``world_size``-share build in ``cache_dir``; None while
    one is missing."""
    paths = [part_file(cache_dir, rank, world_size) for rank in range(world_size)]
    if not all(p.is_file() for p in paths):
        return None
    return [BuildPart.read(p) for p in paths]


def write_index(cache_dir: Path, parts: list[BuildPart]) -> dict:
    """Merge every share's part into ``index.json`` (the build is then finished): each
    cache group's sample count (only groups with a sample), the sample count and the
    skip counts over all shares. A one-process build and any N-share build of the same
    data write the same index, apart from ``world_size``, and so does a resumed one."""
    groups: Counter = Counter()
    skipped: Counter = Counter()
    for part in parts:
        groups.update(part.groups)
        skipped.update({k: n for k, n in part.counts.items() if k not in BUILT_COUNTS})
    index = {
        "world_size": len(parts),
        "samples": sum(groups.values()),
        "groups": {group: n for group, n in sorted(groups.items()) if n > 0},
        "skipped": dict(sorted(skipped.items())),
    }
    write_json_atomic(cache_dir / INDEX_FILE, index)
    return index


def write_sample(cache_dir: Path, source: str, key: str, feats_cnd: torch.Tensor) -> Path:
    # in the dtype encoded: bf16 from a GPU build, half the bytes of fp32
    return save_sample_file(sample_file(cache_dir, source, key), {"feats": feats_cnd})


def save_sample_file(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Write one sample's safetensors file (the feature and motion caches) so that the final
    name only ever holds a whole file: a build killed mid-write resumes cleanly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)  # never leave a half-written file under the final name
    return path


def expected_info(tokenizer: torch.nn.Module, tokenizer_config: dict, data_cfg: DataConfig) -> CacheInfo:
    """What a cache must have been made with to serve this run (the tokenizer in the
    dtype and with the weights the run encodes with; built ``for_cached_features``, its
    ViT is not compared)."""
    return CacheInfo(
        tokenizer_name=str(tokenizer_config.get("name", type(tokenizer).__name__)),
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer, tokenizer_config),
        data_seed=data_cfg.seed,
        frames_per_window=data_cfg.frames_per_window,
        fps=float(data_cfg.fps),  # cache.json has always held the rate as a float (8.0)
        frame_stride=data_cfg.frame_stride,
        image_size=int(tokenizer.input_size),
        tokens_per_clip=int(tokenizer.num_tokens),
        feature_dim=int(tokenizer.feature_dim),
        encode_dtype=str(tokenizer.dtype).removeprefix("torch."),
        frame_encoder_fingerprint=frame_encoder_fingerprint(tokenizer),
        resize_kernel=data_cfg.resize_kernel,
    )
