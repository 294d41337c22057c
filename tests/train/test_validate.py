"""LLM validation keeps no autograd graph (eval mode turns activation checkpointing off,
so a graph would hold every layer's activations), yet still calls the projection a batch
leaves idle: under ZeRO-3 every rank must gather the same parameters in the same order."""

from __future__ import annotations

import math

import torch

from divot_llm.model import build_divot_llm
from divot_llm.train.stages.llm import CLIP_MASK_KEYS, MODEL_INPUT_KEYS
from divot_llm.train.validate import validate
from tests.train.conftest import hand_batches, tiny_cfg


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in (*MODEL_INPUT_KEYS, *CLIP_MASK_KEYS, "video_feats")}


def test_validation_saves_nothing_for_backward_and_calls_the_idle_head(mistral_tokenizer_dir):
    model = build_divot_llm(tiny_cfg().model, feature_tokens=8, feature_dim=16)
    mixed = hand_batches(mistral_tokenizer_dir, 8, 16, count=1)[0]  # a comprehension + a generation sample
    comprehension_only = {k: v[:1] for k, v in mixed.items()}  # the output projection is idle
    head_inputs: list[bool] = []  # whether the output projection was called with zeros
    hook = model.output_resampler.register_forward_hook(
        lambda m, args, out: head_inputs.append(bool((args[0] == 0).all()))
    )
    saved: list[torch.Size] = []
    try:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
            metrics = validate(
                model,
                model,
                [comprehension_only, mixed],
                model_inputs,
                max_batches=2,
                device=torch.device("cpu"),
            )
            assert saved == []
            model(**model_inputs(mixed))  # a training forward, for contrast
            assert saved
    finally:
        hook.remove()
    assert head_inputs[:2] == [True, False]  # idle-head call (a clip of zeros), then the real one
    assert metrics["val/batches"] == 2 and metrics["val/samples"] == 3
    assert all(math.isfinite(metrics[k]) for k in ("val/lm_loss", "val/gmm_nll", "val/feature_cosine"))
    assert model.training  # the caller's mode comes back
