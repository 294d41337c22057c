"""Per-channel mean and std of a continuous latent video tokenizer's raw latents over the
clips of a config's training data (``divot-data latent-stats``): what VidTok's
``latent_mean`` / ``latent_std`` hold, so that the LLM regresses latents of unit scale
(VidTok's are unscaled; seed-systems §a, Recommendations 2).

The clips are the ones the LLM stages sample (epoch 0 of the train split, as a feature
cache holds them), read as ``cache_build.read_clips`` reads them: a bad sample is skipped
and counted, a source without a usable sample is an error naming it. The moments are
accumulated in float64 (merged per batch), so the result does not depend on the batch
size beyond float64 rounding; std is the population std over every latent position of
every clip.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch

from divot_llm.config.schema import DataConfig
from divot_llm.data.cache_build import check_every_source_usable, read_clips, split_specs
from divot_llm.data.clip_sampling import uint8_to_model_pixels


@dataclass(frozen=True)
class LatentStats:
    """What ``latent_stats.json`` holds."""

    mean: list[float]  # per latent channel
    std: list[float]  # per latent channel (population std)
    clips: int  # clips encoded
    positions: int  # latent values per channel: clips x T' x h x w


class ChannelMoments:
    """Running per-channel count, mean and sum of squared deviations of ``(B, C, ...)``
    tensors (Chan et al.'s pairwise merge, float64: no cancellation over many batches)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean_c: torch.Tensor | None = None
        self.m2_c: torch.Tensor | None = None

    def update(self, values_bc: torch.Tensor) -> None:
        values_cn = values_bc.detach().to("cpu", torch.float64).transpose(0, 1).flatten(1)
        count = values_cn.shape[1]
        mean_c = values_cn.mean(dim=1)
        m2_c = (values_cn - mean_c[:, None]).square().sum(dim=1)
        if self.mean_c is None or self.m2_c is None:
            self.count, self.mean_c, self.m2_c = count, mean_c, m2_c
            return
        total = self.count + count
        delta_c = mean_c - self.mean_c
        self.mean_c = self.mean_c + delta_c * (count / total)
        self.m2_c = self.m2_c + m2_c + delta_c.square() * (self.count * count / total)
        self.count = total

    def mean_std(self) -> tuple[list[float], list[float]]:
        if self.mean_c is None or self.m2_c is None:
            raise ValueError("no values were accumulated")
        return self.mean_c.tolist(), (self.m2_c / self.count).sqrt().tolist()


def latent_stats(
    data_cfg: DataConfig,
    tokenizer,
    max_clips: int | None = None,
    batch_clips: int = 32,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
) -> tuple[LatentStats, Counter]:
    """Per-channel statistics of ``tokenizer.encode_latents`` (a ``LatentVideoTokenizer``,
    continuous) over the train split's clips, and the counts (``samples``, ``clips`` and
    skip reasons).

    Args:
        max_clips: stop after this many clips (the first ones read: with ``workers`` > 0
            which ones depends on the decoding order); None reads every sample once.
        batch_clips: clips per ``encode_latents`` call.
        progress: called with the number of clips of each sample read.
        workers: decoding processes (0 decodes here).

    Raises:
        DataError: no train sources, or one without a usable sample (whole reads only).
        ValueError: no clip could be read.
    """
    # no token sequences are built here: only the spec's clip sampling is read
    specs = split_specs(data_cfg, 0, tokenizer.frames_per_clip, tokenizer.input_size, ("train",))
    moments, counts = ChannelMoments(), Counter()
    pending: list[torch.Tensor] = []
    usable: set[str] = set()
    tick = progress or (lambda n: None)
    complete = True
    for group, _key, clips, read_counts in read_clips(specs, workers):
        counts.update(read_counts)
        if clips is None:
            continue
        if max_clips is not None:
            clips = clips[: max_clips - counts["clips"]]
        usable.add(group)
        pending.append(clips)
        counts.update(samples=1, clips=clips.shape[0])
        tick(clips.shape[0])
        if sum(c.shape[0] for c in pending) >= batch_clips:
            _encode_into(moments, pending, tokenizer)
        if max_clips is not None and counts["clips"] >= max_clips:
            complete = False
            break
    _encode_into(moments, pending, tokenizer)
    if moments.count == 0:
        raise ValueError(f"no clip of the train sources could be read (skipped: {dict(counts)})")
    if complete:
        check_every_source_usable(specs, usable, counts, "read", "no statistics are written")
    mean, std = moments.mean_std()
    positions = moments.count
    return LatentStats(mean=mean, std=std, clips=counts["clips"], positions=positions), counts


def _encode_into(moments: ChannelMoments, pending: list[torch.Tensor], tokenizer) -> None:
    if not pending:
        return
    frames_bfchw = torch.cat(pending).to(tokenizer.device)  # (sum C, F, 3, S, S) uint8
    pending.clear()
    moments.update(tokenizer.encode_latents(uint8_to_model_pixels(frames_bfchw).to(tokenizer.dtype)))
