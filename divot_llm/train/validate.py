"""Validation on held-out sources: the loop every stage shares (``zero_safe_sums``) and
the LLM stages' metrics -- LM loss, GMM NLL, and the cosine between the GMM's
deterministic prediction (weight-averaged component mean) and the target feature.

Written to be safe under ZeRO-3, where every module call gathers its parameters with a
collective that all ranks must join in the same order:

* every rank evaluates the same number of batches (the minimum over ranks:
  ``zero_safe_sums``, which also sums the results over ranks in one collective);
* the LLM's forward runs under ``no_grad`` (no autograd graph: in eval mode activation
  checkpointing is off, and a graph would hold every layer's activations, ~90 GB at 7B),
  and ``DivotLLM`` still calls a projection its batch does not use (its "idle head"
  term), so a rank whose batch has no comprehension (or no generation) clip gathers
  that projection's parameters exactly like the others;
* the GMM parameters for the cosine are read off the output projection's forward with a
  hook instead of calling the head a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.runtime import eval_mode
from divot_llm.train import distributed


def zero_safe_sums(
    engine: nn.Module,
    batches: Iterable[Any],
    max_batches: int,
    device: torch.device,
    batch_sums: Callable[[int, Any], Sequence[float]],
    before: Callable[[], None] = lambda: None,
) -> tuple[list[float], int] | None:
    """Validation sums, safe under ZeRO-3 (see the module docstring): every rank evaluates
    the same number of batches -- the minimum over ranks, at most ``max_batches`` -- with
    the engine in eval mode (the caller's mode comes back after, also on an error).

    Args:
        batches: This rank's validation batches (one pass), in the form ``batch_sums`` takes.
        batch_sums: (batch index, batch) -> the batch's sums, as many for every batch.
        before: Runs on every rank once the count is agreed, before eval mode (work that
            must be collective, e.g. refreshing state the evaluation reads).

    Returns:
        (the sums over batches and ranks, batches per rank), or None when some rank has
        no batch.
    """
    taken = list(islice(batches, max_batches))
    count = distributed.all_reduce_min(len(taken), device)
    if count == 0:
        return None
    before()
    totals: list[float] | None = None
    with eval_mode(engine):
        for index, batch in enumerate(taken[:count]):
            sums = batch_sums(index, batch)
            totals = list(sums) if totals is None else [t + s for t, s in zip(totals, sums, strict=True)]
    return distributed.all_reduce_sum(totals, device), count


class _CaptureQueryParams:
    """Forward hook on the output projection keeping its output at the query tokens
    (``(G, N, P)``; the idle-head call has a 2-D input and is ignored)."""

    def __init__(self):
        self.params: torch.Tensor | None = None

    def __call__(self, module, inputs, output) -> None:
        if inputs[0].dim() == 3:
            self.params = output.detach()


def validate(
    engine,
    model,
    val_batches: Iterable[dict],
    prepare: Callable[[dict], dict],
    max_batches: int,
    device: torch.device,
) -> dict[str, float] | None:
    """Mean validation metrics over all ranks, or None when some rank has no batch.

    Args:
        engine: The DeepSpeed engine (called for the forward).
        model: The ``DivotLLM`` inside it (for the hook and the video head).
        val_batches: This rank's validation loader (one pass).
        prepare: Loader batch -> model inputs on the device (video features encoded).
        max_batches: At most this many batches per rank.
        device: For the cross-rank reductions.
    """
    hook = _CaptureQueryParams()

    def batch_sums(_: int, inputs: dict) -> list[float]:
        hook.params = None
        with torch.no_grad():
            out = engine(**inputs)
        return _batch_sums(out, inputs, hook.params, model.video_head)

    prepared = (prepare(b) for b in val_batches)  # features, not frames, kept
    handle = model.output_resampler.register_forward_hook(hook)
    try:
        result = zero_safe_sums(engine, prepared, max_batches, device, batch_sums)
    finally:
        handle.remove()
    if result is None:
        return None
    (lm, lm_n, gmm, q_n, cos, samples), count = result
    metrics = {"val/lm_loss": lm / max(lm_n, 1), "val/samples": samples, "val/batches": float(count)}
    if q_n:
        metrics.update({"val/gmm_nll": gmm / q_n, "val/feature_cosine": cos / q_n})
    return metrics


def _batch_sums(out, inputs: dict, query_params: torch.Tensor | None, gmm) -> list[float]:
    """Loss sums weighted by their token counts, and the summed per-token cosine."""
    labels = inputs["labels"]
    lm_tokens = float((labels[:, 1:] != -100).sum())
    query_tokens = float(inputs["ids_gen_mask"].sum())
    cosine = 0.0
    if query_params is not None and query_tokens:
        target_gnd = inputs["video_feats"][inputs["embeds_gen_mask"].bool()].float()
        predicted_gnd = gmm.predict(query_params)
        cosine = float(F.cosine_similarity(predicted_gnd, target_gnd, dim=-1).sum())
    return [
        float(out.lm_loss.detach()) * lm_tokens,
        lm_tokens,
        float(out.gmm_loss.detach()) * query_tokens,
        query_tokens,
        cosine,
        float(labels.shape[0]),
    ]
