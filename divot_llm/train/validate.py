"""Validation on held-out sources: LM loss, GMM NLL, and the cosine between the GMM's
deterministic prediction (weight-averaged component mean) and the target feature.

Written to be safe under ZeRO-3, where every module call gathers its parameters with a
collective that all ranks must join in the same order:

* every rank evaluates the same number of batches (the minimum over ranks);
* the forward runs with autograd *on* (the graph is dropped at once): ``DivotLLM`` then
  adds its zero-weighted "idle head" terms, so a rank whose batch has no comprehension
  (or no generation) clip still calls that projection, exactly like a training step;
* the GMM parameters for the cosine are read off the output projection's forward with a
  hook instead of calling the head a second time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice

import torch
import torch.nn.functional as F

from divot_llm.train import distributed


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
        model: The ``DivotLLM`` inside it (for the hook and the GMM head).
        val_batches: This rank's validation loader (one pass).
        prepare: Loader batch -> model inputs on the device (video features encoded).
        max_batches: At most this many batches per rank.
        device: For the cross-rank reductions.
    """
    prepared = [prepare(b) for b in islice(val_batches, max_batches)]  # features, not frames, kept
    count = distributed.all_reduce_min(len(prepared), device)
    if count == 0:
        return None
    hook = _CaptureQueryParams()
    handle = model.output_resampler.register_forward_hook(hook)
    was_training = engine.training
    engine.eval()
    sums = [0.0] * 6  # lm sum, lm tokens, gmm sum, query tokens, cosine sum, samples
    try:
        for inputs in prepared[:count]:
            hook.params = None
            with torch.enable_grad():
                out = engine(**inputs)
            for i, value in enumerate(_batch_sums(out, inputs, hook.params, model.gmm)):
                sums[i] += value
            del out
    finally:
        handle.remove()
        engine.train(was_training)
    lm, lm_n, gmm, q_n, cos, samples = distributed.all_reduce_sum(sums, device)
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
