"""Step time with and without the feature cache, measured in the same run.

    python tools/bench/feature_cache.py [--steps 20] [--experiment demo] [overrides ...]

Builds a synthetic set (or uses data.root), a feature cache for it, then times training
steps (load batch -> [decode + frozen tokenizer] -> model forward/backward -> AdamW) from
frames and from the cache, and prints both and their ratio. Numbers from a CPU machine
only compare the two paths; absolute timings are only meaningful on the target GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from divot_llm.config import DivotConfig, apply_overrides, compose_config
from divot_llm.data.cache_build import build_feature_cache
from divot_llm.data.clip_sampling import uint8_to_model_pixels
from divot_llm.data.feature_cache import expected_info
from divot_llm.data.loader import build_loader
from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset
from divot_llm.model import build_divot_llm
from divot_llm.text import DivotTextTokenizer, load_text_tokenizer
from divot_llm.tokenizers import VideoTokenizer, build_video_tokenizer

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "embeds_cmp_mask", "embeds_gen_mask", "ids_cmp_mask",
              "ids_gen_mask", "segment_ids", "position_ids")  # fmt: skip


def time_steps(
    cfg: DivotConfig,
    text: DivotTextTokenizer,
    video_tokenizer: VideoTokenizer,
    info: dict,
    steps: int,
    cached: bool,
) -> float:
    """Mean seconds per training step after one warm-up step."""
    vt = cfg.video_tokenizer
    loader = build_loader(cfg.data, text, vt.num_tokens, vt.frames_per_clip, video_tokenizer.input_size,
                          cache_info=info if cached else None)  # fmt: skip
    torch.manual_seed(0)
    model = build_divot_llm(cfg.model, feature_tokens=info.tokens_per_clip, feature_dim=info.feature_dim)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = iter(loader)
    start = None
    for step in range(steps + 1):
        if step == 1:
            start = time.perf_counter()
        batch = next(batches)
        clips = batch["embeds_cmp_mask"] | batch["embeds_gen_mask"]
        if cached:
            feats = batch["video_feats"]
        else:
            feats = torch.zeros(*clips.shape, info.tokens_per_clip, info.feature_dim)
            # frames (G, F, 3, S, S): only the real clips, in the order the mask selects them
            feats[clips] = video_tokenizer.encode(uint8_to_model_pixels(batch["frames"]))
        loss = model(**{k: batch[k] for k in MODEL_KEYS if k in batch}, video_feats=feats).total_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--videos", type=int, default=24, help="synthetic train videos (images: half)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 suits tiny models on CPU)"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides (default: the demo experiment)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    overrides = list(args.overrides)
    if not any(o.startswith("data.root=") for o in overrides):
        write_synthetic_dataset(
            work / "synthetic",
            seed=0,
            counts=SyntheticCounts(train_videos=args.videos, val_videos=2, images=args.videos // 2),
        )
        overrides.append(f"data.root={work / 'synthetic'}")
    cfg = compose_config(overrides)
    text = load_text_tokenizer(cfg.model.tokenizer_path)
    torch.manual_seed(0)
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    info = expected_info(video_tokenizer, dataclasses.asdict(cfg.video_tokenizer), cfg.data)
    build_feature_cache(cfg.data, video_tokenizer, info, work / "cache")
    cached_cfg = apply_overrides(cfg, [f"data.feature_cache={work / 'cache'}"])
    uncached = time_steps(cfg, text, video_tokenizer, info, args.steps, cached=False)
    cached = time_steps(cached_cfg, text, video_tokenizer, info, args.steps, cached=True)
    print(
        f"config: {cfg.experiment_name} (model {cfg.model.name}, video tokenizer {cfg.video_tokenizer.name})"
    )
    print(f"step time from frames : {uncached * 1000:8.1f} ms")
    print(f"step time from cache  : {cached * 1000:8.1f} ms")
    print(f"ratio cached/uncached : {cached / uncached:8.3f}  ({uncached / cached:.2f}x faster)")


if __name__ == "__main__":
    main()
