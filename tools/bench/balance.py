"""How busy data-parallel ranks are under two ways of drawing batches: a FLOP model, no
training, a few seconds on a CPU.

Every rank of a step waits for the slowest one (the gradient all-reduce), so a step lasts
as long as its heaviest rank's batch. The modelled busy fraction is the mean rank's work
over the heaviest rank's, weighted by step time (sum over steps of mean work / sum of max
work: the share of GPU time spent computing rather than waiting). Compared:

    before             ``data.mixing=batch`` today: every rank draws its batch's source
                       on its own (by weight) and takes that source's ``batch_size`` samples
    same source        every rank draws the same source for a step (from the shared seed
                       and the step), still ``batch_size`` samples
    same source packed the same batches packed without padding: the 7B configs as shipped
                       (``data.packing``, no ``data.tokens_per_batch``)
    budget BxL         same source; each rank's batch closes by a token budget with
                       ``data.tokens_per_batch``'s rule: once batch size x longest sample
                       >= the budget; padded
    budget sum         same source; samples are taken while their real tokens fit the
                       budget; padded
    budget sum packed  the same batches packed without padding (``data.packing`` with
                       per-sample block masks): each sample costs its own length
    as configured      what the experiment's data config does (the "after" of the last
                       column): same source, up to ``batch_size`` samples closed by
                       ``data.tokens_per_batch`` as the mixer measures it (packed rows x
                       longest row when packing), packed or padded as configured

A source's budget is its ``batch_size`` x its mean sample length, so budget batches hold
about as many samples as today's (the mean is printed next to each busy fraction).

Inputs, from the real code and configs:

* sources, weights, batch sizes, num_clips and max_length: ``--experiment`` (default
  ``pretrain_7b``: conf/data/pretrain.yaml) through ``compose_config``;
* work per batch: ``FlopModel.batch_flops`` (hardware FLOPs: activation recompute
  included) of the experiment's model and video tokenizer built on the meta device (for
  pretrain_7b: Mistral-7B + LoRA, ViT-H/14 Divot tokenizer, its FLOPs per clip counted by
  torch's FLOP counter), on padded batches -- every rank computes its batch's longest
  length for every sample, as dense batches do today;
* sequence lengths: the real ``SequenceBuilder`` (templates, 64 tokens per clip) with
  captions of ``--caption-tokens`` tokens (Poisson), and for video sources a clip count
  from the reference's caption rule (``plan_windows``, dense=False: a video shorter than
  num_clips x 2 s gets one clip per 2 s) on WebVid-like durations: lognormal with mean
  ``--mean-duration`` s (WebVid-10M: 18 s) and ``--duration-sigma``, 30 fps. jsonl sources
  are videos, webdataset sources images (one clip): the pretrain mix's layout.

    python tools/bench/balance.py                      # pretrain_7b, 8 and 64 ranks
    python tools/bench/balance.py --steps 200 --ranks 8  # quicker
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from divot_llm.config import compose_config
from divot_llm.config.schema import DivotConfig, SourceConfig, SourceKind
from divot_llm.data.clip_sampling import plan_windows
from divot_llm.data.loader import pack_length_of
from divot_llm.data.mixing import padded_tokens
from divot_llm.data.sequences import SequenceBuilder, sequence_example
from divot_llm.model import build_stage_model
from divot_llm.model.build import checkpointed_layers
from divot_llm.text import load_text_tokenizer
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.train.metrics import FlopModel, TokenizerFlops, tokenizer_flops

# Build on the meta device: no weights are read, so the weight paths are dropped.
META_OVERRIDES = (
    "model.llm.path=null",
    "model.tokenizer_path=null",
    "video_tokenizer.pretrained_path=null",
    "video_tokenizer.vit_path=null",
    "detokenizer.pretrained_path=null",
    "data.root=.",
)
VIDEO_FPS = 30.0
MODES = (
    "before",
    "same source",
    "same source packed",
    "budget BxL",
    "budget sum",
    "budget sum packed",
    "as configured",
)


@dataclass
class SourcePool:
    """Samples of one source: padded-length-independent work ``fixed`` (LM head,
    projections, video tokenizer) and length ``tokens``, plus the batch rules."""

    name: str
    weight: float
    batch_size: int
    tokens: np.ndarray  # (P,) int
    fixed: np.ndarray  # (P,) float, FLOPs
    budget: float  # token budget of "after" batches
    configured: tuple[int | None, int | None]  # the config's (data.tokens_per_batch, pack length)


def meta_flop_model(cfg: DivotConfig) -> FlopModel:
    """The experiment's model and video tokenizer on the meta device, counted."""
    tok_cfg = asdict(cfg.video_tokenizer)
    with torch.device("meta"):
        tokenizer = build_video_tokenizer(tok_cfg)
    model = build_stage_model(cfg, tokenizer, init_from=None, device="meta")
    recompute = checkpointed_layers(cfg.model.llm.checkpoint_every, cfg.model.llm.num_hidden_layers)
    return FlopModel.from_model(
        model, meta_tokenizer_flops(tokenizer), recompute=recompute / cfg.model.llm.num_hidden_layers
    )


def meta_tokenizer_flops(tokenizer) -> TokenizerFlops:
    """The tokenizer's FLOPs per video clip and per still. On the meta device frames have
    no values, so the tokenizer cannot tell a still and counts it as a video: a still is
    the video minus the ViT of the F - 1 frames it skips (the Divot tokenizer's
    ``frame_patches`` runs the ViT on each frame alone)."""
    counted = tokenizer_flops(tokenizer, "meta")
    size = tokenizer.input_size
    one_frame = torch.zeros(1, 1, 3, size, size, device="meta", dtype=tokenizer.dtype)
    with FlopCounterMode(display=False) as counter:
        tokenizer.frame_patches(one_frame)
    vit_frame = float(counter.get_total_flops())
    return TokenizerFlops(
        video=counted.video, still=counted.video - (tokenizer.frames_per_clip - 1) * vit_frame
    )


def one_sample_batch(example: dict) -> dict[str, torch.Tensor]:
    keys = ("attention_mask", "labels", "ids_cmp_mask", "ids_gen_mask", "embeds_cmp_mask", "embeds_gen_mask")
    return {k: example[k].unsqueeze(0) for k in keys}


def body_flops(flops: FlopModel, max_length: int) -> np.ndarray:
    """Hardware FLOPs of ``T`` tokens of the LLM body (no labels, no clips), T = 0..max:
    what each sample of a padded batch costs at the batch's length."""
    out = np.zeros(max_length + 1)
    for t in range(1, max_length + 1):
        empty = {
            "attention_mask": torch.ones(1, t, dtype=torch.long),
            "labels": torch.full((1, t), -100),
            "ids_cmp_mask": torch.zeros(1, t, dtype=torch.bool),
            "ids_gen_mask": torch.zeros(1, t, dtype=torch.bool),
            "embeds_cmp_mask": torch.zeros(1, 1, dtype=torch.bool),
            "embeds_gen_mask": torch.zeros(1, 1, dtype=torch.bool),
        }
        out[t] = flops.batch_flops(empty)[1]
    return out


def clip_counts(source: SourceConfig, count: int, args, rng: np.random.Generator) -> np.ndarray:
    """Clips per sample: the caption rule on WebVid-like durations (several-clip sources),
    else 1 (images, generation targets)."""
    if source.num_clips == 1:
        return np.ones(count, dtype=np.int64)
    mu = np.log(args.mean_duration) - args.duration_sigma**2 / 2  # lognormal with that mean
    seconds = rng.lognormal(mu, args.duration_sigma, count)
    return np.asarray(
        [
            plan_windows(max(1, int(s * VIDEO_FPS)), VIDEO_FPS, source.num_clips, rng, dense=False).shape[0]
            for s in seconds
        ]
    )


def source_pool(
    name: str,
    source: SourceConfig,
    builder: SequenceBuilder,
    flops: FlopModel,
    body: np.ndarray,
    args,
    rng,
    configured: tuple[int | None, int | None] = (None, None),
) -> SourcePool:
    media_kind = "video" if source.num_clips > 1 else "image"  # one clip: the same tokens either way
    clips = clip_counts(source, args.pool, args, rng)
    words = 1 + rng.poisson(args.caption_tokens - 1, args.pool)
    cache: dict[tuple[int, int], tuple[int, float]] = {}
    tokens, fixed = np.zeros(args.pool, dtype=np.int64), np.zeros(args.pool)
    for i, key in enumerate(zip(clips.tolist(), words.tolist(), strict=True)):
        if key not in cache:
            c, w = key
            seq = builder.build(
                source.task.value, media_kind, c, source.max_length, rng, captions=["dog " * w]
            )
            example = sequence_example(seq, source.task.value, "video_feats", torch.zeros(c, 1, 1), name, "")
            length = len(seq.input_ids)
            # the batch has no frames, so batch_flops counts no tokenizer: add its c clips
            # (jsonl sources are videos, shards images, which the ViT encodes once per still)
            per_clip = flops.tokenizer.video if source.kind is SourceKind.jsonl else flops.tokenizer.still
            fixed_flops = flops.batch_flops(one_sample_batch(example))[1] - body[length] + c * per_clip
            cache[key] = (length, fixed_flops)
        tokens[i], fixed[i] = cache[key]
    budget = source.batch_size * float(tokens.mean())
    return SourcePool(name, source.weight, source.batch_size, tokens, fixed, budget, configured)


def batch_work(pool: SourcePool, body: np.ndarray, mode: str, rng: np.random.Generator) -> tuple[float, int]:
    """(FLOPs, samples) of one rank's batch from ``pool`` under ``mode`` (see MODES)."""
    picks = rng.integers(len(pool.tokens), size=pool.batch_size)
    if mode == "as configured":
        return configured_batch_work(pool, body, picks)
    if mode.startswith("budget"):
        picks = rng.integers(len(pool.tokens), size=8 * pool.batch_size)  # more than any batch takes
        tokens = pool.tokens[picks]
        if mode == "budget BxL":  # data.tokens_per_batch's rule: close once B x longest >= budget
            closed = np.arange(1, len(picks) + 1) * np.maximum.accumulate(tokens) >= pool.budget
            count = int(np.argmax(closed)) + 1
        else:  # real tokens: take samples while they fit the budget (the first always)
            count = max(1, int(np.searchsorted(np.cumsum(tokens), pool.budget, side="right")))
        picks = picks[:count]
    if mode.endswith("packed"):  # no padding: each sample at its own length
        return float(pool.fixed[picks].sum() + body[pool.tokens[picks]].sum()), len(picks)
    longest = int(pool.tokens[picks].max())
    return float(pool.fixed[picks].sum() + len(picks) * body[longest]), len(picks)


def configured_batch_work(pool: SourcePool, body: np.ndarray, picks: np.ndarray) -> tuple[float, int]:
    """(FLOPs, samples) of a batch the loader closes as configured: up to ``batch_size``
    samples, closed once ``data.tokens_per_batch`` is reached by the mixer's own measure
    (``packed_tokens`` when packing, else examples x longest); packed samples each cost
    their own length, padded ones the longest."""
    budget, pack_length = pool.configured
    lengths: list[int] = []
    for pick in picks:
        lengths.append(int(pool.tokens[pick]))
        size = sum(lengths) if pack_length else padded_tokens(lengths)
        if budget is not None and size >= budget:
            break
    taken = picks[: len(lengths)]
    if pack_length:
        return float(pool.fixed[taken].sum() + body[pool.tokens[taken]].sum()), len(taken)
    return float(pool.fixed[taken].sum() + len(taken) * body[max(lengths)]), len(taken)


def busy_fraction(
    pools: list[SourcePool], body: np.ndarray, ranks: int, steps: int, mode: str, seed: int
) -> tuple[float, float]:
    """(sum over steps of mean rank work / sum of max rank work, mean samples per rank-batch)."""
    rng = np.random.default_rng(seed)
    weights = np.asarray([p.weight for p in pools])
    weights = weights / weights.sum()
    mean_sum = max_sum = 0.0
    samples = 0
    for _ in range(steps):
        if mode == "before":
            sources = rng.choice(len(pools), size=ranks, p=weights)
        else:
            sources = np.full(ranks, rng.choice(len(pools), p=weights))
        work = []
        for s in sources:
            flops, n = batch_work(pools[s], body, mode, rng)
            work.append(flops)
            samples += n
        mean_sum += float(np.mean(work))
        max_sum += float(np.max(work))
    return mean_sum / max_sum, samples / (steps * ranks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="pretrain_7b")
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--steps", type=int, default=2000, help="modelled steps per setting")
    parser.add_argument("--pool", type=int, default=4000, help="samples drawn per source")
    parser.add_argument("--mean-duration", type=float, default=18.0, help="video seconds (WebVid-10M: 18)")
    parser.add_argument("--duration-sigma", type=float, default=0.6, help="lognormal sigma of durations")
    parser.add_argument("--caption-tokens", type=float, default=16.0, help="mean caption length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="more config overrides")
    args = parser.parse_args(argv)

    cfg = compose_config([f"experiment={args.experiment}", *META_OVERRIDES, *args.overrides])
    flops = meta_flop_model(cfg)
    builder = SequenceBuilder(load_text_tokenizer(cfg.model.tokenizer_path), cfg.video_tokenizer.num_tokens)
    body = body_flops(flops, max(s.max_length for s in cfg.data.sources.values()))
    rng = np.random.default_rng(args.seed)
    pack_length = pack_length_of(cfg.data, cfg.data.sources)
    configured = (cfg.data.tokens_per_batch, pack_length)
    pools = [
        source_pool(n, s, builder, flops, body, args, rng, configured) for n, s in cfg.data.sources.items()
    ]

    print(
        f"{args.experiment}: video tokenizer {flops.tokenizer.video / 1e12:.3g} TFLOP per video clip, "
        f"{flops.tokenizer.still / 1e12:.3g} per still"
    )
    print(
        f"  {'source':<14} {'weight':>6} {'batch':>5} {'tokens/sample':>13} {'TFLOP/batch':>11}  (means, unpadded)"
    )
    for p in pools:
        mean_batch = p.batch_size * float((p.fixed + body[p.tokens]).mean())  # unpadded
        print(
            f"  {p.name:<14} {p.weight:6.2f} {p.batch_size:5d} {p.tokens.mean():13.0f} {mean_batch / 1e12:11.3g}"
        )
    print(
        f"modelled busy fraction (mean rank work / max rank work, time-weighted over {args.steps} steps; "
        "samples per rank-batch in brackets):"
    )
    print(f"  {'ranks':>5}  " + "  ".join(f"{m:>19}" for m in MODES) + f"  {'after/before':>12}")
    for ranks in args.ranks:
        results = [busy_fraction(pools, body, ranks, args.steps, m, args.seed + ranks) for m in MODES]
        cells = "  ".join(f"{f'{busy:.1%} ({n:.1f})':>18}" for busy, n in results)
        print(f"  {ranks:>5}  {cells}  {results[-1][0] / results[0][0]:11.2f}x")
    print(
        f"as configured: data.tokens_per_batch={cfg.data.tokens_per_batch}, "
        f"packing {'rows of ' + str(pack_length) if pack_length else 'off'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
