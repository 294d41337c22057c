"""The motion cache: Video-LaVIT motion fields -- or a motion tokenizer's codes of them --
computed once (``divot-data motion-cache``, ``motion_cache_build``) and read by the motion
loader instead of re-encoding every video (``data.motion_cache``).

Layout (one safetensors file per sample read, named as in the feature cache)::

    <cache>/motion_cache.json                        what produced it (``MotionCacheInfo``)
    <cache>/<split>-<source>/<sanitised key>.safetensors
        fields        (K, 2, F, H, W) float16   every clip of the video (``motion_clips``), or
        codes         (K, N) int32              the motion tokenizer's codes of each clip (a tokens cache)
        start_frames  (K,) int64                each clip's I-frame in the re-encoded stream
        size          (2,) int64                the video's displayed width and height
        keyframe_codes    (sum n_k,) int32      with a keyframe tokenizer (Video-LaVIT's LLM data):
        keyframe_lengths  (K,) int64            each clip's keyframe codes, concatenated, and their counts

With a keyframe tokenizer a clip's keyframe is frame ``start_frames[k]`` of the re-encoded
stream (``stream_frames``), resized and centre-cropped to the tokenizer's input as the
loader's clips are (``resized_uint8``); an image sample is its own keyframe: it gets
``keyframe_codes`` (one) without motion, where a motion-only cache records it as skipped.

Every clip of a video is kept, not one: the loader picks a clip per epoch from the same
per-sample generator as when it extracts them, so the cache serves every epoch exactly as
extraction would (fields rounded to fp16). A sample whose media gives no clip gets a file
too, holding only its skip reason (and its size when it could be read): the loader skips it
with the same reason and counts as without the cache, and a resumed build does not
re-encode it. The source's size filters are applied when reading (``size``), so they may
change after the build.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from divot_llm.config.schema import MotionFieldConfig
from divot_llm.data.errors import MediaError
from divot_llm.data.feature_cache import (
    component_fingerprint,
    sample_file,
    save_sample_file,
    write_json_atomic,
)

MOTION_INFO_FILE = "motion_cache.json"
FORMAT = 1  # the layout above


@dataclass(frozen=True)
class MotionCacheInfo:
    """What made a motion cache: the extraction settings and, for codes, the tokenizer."""

    motion: dict  # data.motion (MotionFieldConfig) as a plain dict
    tokenizer: str | None = None  # the motion tokenizer's name (a tokens cache); None: fields
    tokenizer_fingerprint: str | None = None  # ``motion_tokenizer_fingerprint``
    format: int = FORMAT
    keyframe_tokenizer: str | None = None  # the keyframe tokenizer's name; None: no keyframe codes
    keyframe_fingerprint: str | None = None  # ``motion_tokenizer_fingerprint`` of it (any module)

    @classmethod
    def of(
        cls,
        motion: MotionFieldConfig,
        tokenizer: str | None = None,
        fingerprint: str | None = None,
        keyframe_tokenizer: str | None = None,
        keyframe_fingerprint: str | None = None,
    ):
        return cls(asdict(motion), tokenizer, fingerprint, FORMAT, keyframe_tokenizer, keyframe_fingerprint)

    @property
    def holds_codes(self) -> bool:
        return self.tokenizer_fingerprint is not None


def motion_tokenizer_fingerprint(tokenizer: torch.nn.Module, config: dict) -> str:
    """Identifies a motion tokenizer by what determines its codes: its config (``config``,
    the composed ``motion_tokenizer``; file paths left out), the dtype it encodes in and its
    weights. A run reading a tokens cache computes it from its own tokenizer."""
    dtype = next(tokenizer.parameters()).dtype
    return component_fingerprint(config | {"dtype": str(dtype)}, tokenizer.state_dict())


@dataclass(frozen=True)
class MotionRecord:
    """One sample of a motion cache: its clips, or why it has none."""

    values: torch.Tensor | None  # fields (K, 2, F, H, W) or codes (K, N); None when skipped
    start_frames: np.ndarray | None  # (K,) int64
    size: tuple[int, int] | None  # displayed (width, height); None if the video could not be probed
    skip: tuple[str, str] | None = None  # (reason, detail) of a sample without a clip
    # with a keyframe tokenizer: each clip's keyframe codes (n_k,) int64 -- an image's one,
    # with ``values`` None; while building, the keyframes to encode, (K, 3, S, S) uint8
    keyframe_codes: list[torch.Tensor] | None = None
    keyframe_pixels: torch.Tensor | None = None


class MotionCache:
    """Read side of a motion cache folder."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        info_path = self.dir / MOTION_INFO_FILE
        if not info_path.is_file():
            raise FileNotFoundError(
                f"{info_path} not found: not a motion cache (build one with `divot-data motion-cache`)"
            )
        self.info = MotionCacheInfo(**json.loads(info_path.read_text()))

    def check(self, expected: MotionCacheInfo) -> None:
        """Raise ValueError naming everything where the cache differs from this run."""
        got, want = self.info, expected
        diffs = [
            f"data.motion.{k}: cache {got.motion.get(k)!r} != run {v!r}"
            for k, v in want.motion.items()
            if got.motion.get(k) != v
        ]
        if got.holds_codes != want.holds_codes:
            has = f"the codes of motion tokenizer {got.tokenizer}" if got.holds_codes else "motion fields"
            diffs.append(f"it holds {has}, this run reads {'codes' if want.holds_codes else 'fields'}")
        elif got.tokenizer_fingerprint != want.tokenizer_fingerprint:
            diffs.append(
                f"motion tokenizer: cache {got.tokenizer} {got.tokenizer_fingerprint} != run "
                f"{want.tokenizer_fingerprint} (other weights, config or dtype)"
            )
        if want.keyframe_fingerprint is not None and got.keyframe_fingerprint != want.keyframe_fingerprint:
            has = f"keyframe tokenizer {got.keyframe_tokenizer} {got.keyframe_fingerprint}"
            diffs.append(
                f"{has if got.keyframe_fingerprint else 'no keyframe codes'} != run {want.keyframe_fingerprint}"
            )
        if got.format != want.format:
            diffs.append(f"layout version: cache {got.format} != {want.format}")
        if diffs:
            rebuild = f"`divot-data motion-cache --out {self.dir} -- <this run's overrides>`"
            raise ValueError(
                f"motion cache {self.dir} was made for a different setup: {'; '.join(diffs)}. Rebuild it "
                f"for this config ({rebuild}) or set data.motion_cache=null to extract motion while loading."
            )


def write_motion_info(cache_dir: Path, info: MotionCacheInfo) -> None:
    # every rank of a build writes it, the same: atomically, so that none reads half of it
    write_json_atomic(cache_dir / MOTION_INFO_FILE, asdict(info), indent=2)


def write_motion_record(cache_dir: Path, group: str, key: str, record: MotionRecord) -> Path:
    """Store a sample: fields as fp16 (half the bytes; the fields are a few units in size,
    far inside fp16's range), codes as int32."""
    tensors: dict[str, torch.Tensor] = {}
    if record.size is not None:
        tensors["size"] = torch.tensor(record.size, dtype=torch.int64)
    if record.skip is not None:
        metadata = {"skip_reason": record.skip[0], "skip_detail": record.skip[1]}
        return save_sample_file(sample_file(cache_dir, group, key), tensors, metadata)
    if record.keyframe_codes is not None:
        tensors["keyframe_codes"] = torch.cat([c.reshape(-1) for c in record.keyframe_codes]).to(torch.int32)
        tensors["keyframe_lengths"] = torch.tensor(
            [c.numel() for c in record.keyframe_codes], dtype=torch.int64
        )
    if record.values is None:  # an image: its keyframe codes alone
        return save_sample_file(sample_file(cache_dir, group, key), tensors)
    if record.values.is_floating_point():
        tensors["fields"] = record.values.to(torch.float16)
    else:
        tensors["codes"] = record.values.to(torch.int32)
    tensors["start_frames"] = torch.from_numpy(np.asarray(record.start_frames, dtype=np.int64))
    return save_sample_file(sample_file(cache_dir, group, key), tensors)


def load_motion_record(cache_dir: Path, group: str, key: str) -> MotionRecord:
    """A cached sample: fields as float32 (from fp16), codes as int64.

    Raises:
        MediaError: ``not_in_cache`` (no file: the cache was built without this sample, e.g.
            a part of ``--shard``), ``corrupt_cache_file`` (unreadable).
    """
    path = sample_file(cache_dir, group, key)
    if not path.is_file():
        raise MediaError("not_in_cache", f"no cached motion for {group} {key} ({path})")
    try:
        with safe_open(path, "pt") as handle:
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
            metadata = handle.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types on a damaged file
        raise MediaError("corrupt_cache_file", f"{path}: {type(exc).__name__}: {exc}") from exc
    size = tuple(tensors["size"].tolist()) if "size" in tensors else None
    if "skip_reason" in metadata:
        return MotionRecord(None, None, size, (metadata["skip_reason"], metadata.get("skip_detail", "")))
    keyframes = None
    if "keyframe_codes" in tensors:
        lengths = tensors["keyframe_lengths"].tolist()
        keyframes = list(tensors["keyframe_codes"].long().split(lengths))
    if "start_frames" not in tensors:  # an image: keyframe codes only
        return MotionRecord(None, None, size, keyframe_codes=keyframes)
    values = tensors["fields"].float() if "fields" in tensors else tensors["codes"].long()
    return MotionRecord(values, tensors["start_frames"].numpy(), size, keyframe_codes=keyframes)
