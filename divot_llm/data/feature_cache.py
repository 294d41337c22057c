"""Precomputed video-tokenizer features: run the frozen tokenizer over a dataset once,
then train from the features instead of decoding and encoding frames every step.

Layout (one safetensors file per sample, keyed like the source sample):

    <cache>/cache.json                           what produced it (see ``CacheInfo``)
    <cache>/<source>/<sanitised key>.safetensors   "feats": (C, N, D) of the sample's clips

The clips cached are the ones the loader samples in epoch 0 (per-sample randomness is
seeded by data seed, key and epoch), so training from the cache sees exactly the
features training from frames would see in its first epoch -- and the same clips again
in later epochs (the price of caching: no new temporal crops).

A cache only fits the tokenizer and sampling settings that made it; ``check`` compares
them and names every mismatch.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from divot_llm.config.schema import DataConfig
from divot_llm.data.errors import MediaError

INFO_FILE = "cache.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class CacheInfo:
    tokenizer_name: str
    tokenizer_fingerprint: str  # config (paths excluded) + a signature of the weights
    data_seed: int
    frames_per_window: int
    fps: float
    frame_stride: int
    image_size: int
    tokens_per_clip: int
    feature_dim: int
    encode_dtype: str  # features differ between fp32 and bf16 encoding


def tokenizer_fingerprint(tokenizer: torch.nn.Module, config: dict) -> str:
    """Identifies a tokenizer by what determines its features: its config (without file
    paths, which differ between machines) and its weights (sum and norm per tensor, cheap
    even for a ViT-H on the GPU)."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps({k: v for k, v in config.items() if not k.endswith("_path")}, sort_keys=True).encode()
    )
    for name, tensor in sorted(tokenizer.state_dict().items()):
        values = tensor.detach().double()
        digest.update(
            f"{name}:{tuple(tensor.shape)}:{values.sum().item():.10e}:{values.norm().item():.10e}".encode()
        )
    return digest.hexdigest()[:20]


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
        self.info = CacheInfo(**json.loads(info_path.read_text()))

    def check(self, expected: CacheInfo) -> None:
        """Raise ValueError naming every field where the cache differs from this run."""
        got, want = asdict(self.info), asdict(expected)
        diffs = [f"{k}: cache {got[k]!r} != run {want[k]!r}" for k in want if got[k] != want[k]]
        if diffs:
            raise ValueError(f"feature cache {self.dir} was made for a different setup: " + "; ".join(diffs))

    def load(self, source: str, key: str) -> torch.Tensor:
        """(C, N, D) float32 features of a sample; FileNotFoundError if not cached,
        MediaError ``corrupt_cache_file`` if its file cannot be read."""
        path = sample_file(self.dir, source, key)
        if not path.is_file():
            raise FileNotFoundError(f"no cached features for {source} {key} ({path})")
        try:
            return load_file(path)["feats"].float()
        except Exception as exc:  # safetensors raises its own error types on a damaged file
            raise MediaError("corrupt_cache_file", f"{path}: {type(exc).__name__}: {exc}") from exc


def write_info(cache_dir: Path, info: CacheInfo) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    (cache_dir / INFO_FILE).write_text(json.dumps(asdict(info), indent=2, sort_keys=True) + "\n")


def write_sample(cache_dir: Path, source: str, key: str, feats_cnd: torch.Tensor) -> Path:
    path = sample_file(cache_dir, source, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"feats": feats_cnd.detach().to("cpu", torch.float32).contiguous()}, str(tmp))
    tmp.replace(path)  # never leave a half-written file under the final name
    return path


def expected_info(tokenizer, tokenizer_config: dict, data_cfg: DataConfig) -> CacheInfo:
    """What a cache must have been made with to serve this run (the tokenizer in the
    dtype and with the weights the run encodes with)."""
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
    )
