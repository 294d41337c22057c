"""Fill a feature cache: sample each sample's clips as the loader does in epoch 0, encode
them with the frozen video tokenizer in batches, write one file per sample.

Re-running continues an interrupted build: samples already written are skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from divot_llm.data.feature_cache import CacheInfo, sample_file, write_info, write_sample
from divot_llm.data.loader import _clips, cache_group, loader_spec, open_source, sample_rngs
from divot_llm.data.sources import Consumer, DataError
from divot_llm.data.video import MediaError


def build_feature_cache(
    data_cfg,
    tokenizer,
    info: CacheInfo,
    out_dir: str | Path,
    splits: tuple[str, ...] = ("train", "val"),
    batch_clips: int = 32,
    progress: Callable[[int], None] | None = None,
) -> Counter:
    """Cache the features of every sample of ``cfg.data``'s sources; returns counts
    (``written``, ``already_cached`` and skip reasons)."""
    out = Path(out_dir)
    write_info(out, info)
    counts: Counter = Counter()
    tick = progress or (lambda n: None)
    for split in splits:
        try:
            spec = loader_spec(
                data_cfg, info.tokens_per_clip, tokenizer.frames_per_clip, info.image_size, split
            )
        except DataError:
            if split == "train":
                raise
            continue  # no validation sources configured
        pending: list[tuple[str, str, torch.Tensor]] = []
        for src in spec.sources:
            group = cache_group(split, src.name)
            source = open_source(spec, src, Consumer(), infinite=False)
            for raw in source:
                tick(1)
                if sample_file(out, group, raw.key).is_file():
                    counts["already_cached"] += 1
                    continue
                try:
                    clips = _clips(raw, src, spec, sample_rngs(spec.seed, raw.key, 0)[0])
                except MediaError as exc:
                    counts[exc.reason] += 1
                    continue
                pending.append((group, raw.key, clips))
                if sum(c.shape[0] for *_, c in pending) >= batch_clips:
                    counts["written"] += _flush(pending, tokenizer, out)
            counts.update(source.skipped)
        counts["written"] += _flush(pending, tokenizer, out)
    return counts


def _flush(pending: list[tuple[str, str, torch.Tensor]], tokenizer, out: Path) -> int:
    if not pending:
        return 0
    frames_bfchw = torch.cat([clips for *_, clips in pending])  # (sum C, F, 3, S, S)
    feats_bnd = tokenizer.encode(frames_bfchw.to(tokenizer.device, tokenizer.dtype)).float().cpu()
    start = 0
    for group, key, clips in pending:
        write_sample(out, group, key, feats_bnd[start : start + clips.shape[0]])
        start += clips.shape[0]
    written = len(pending)
    pending.clear()
    return written
