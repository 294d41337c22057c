"""The video head of a ``DivotLLM`` (``model.head``): how clip features enter the LLM and
how the query hidden states become a loss and sampled features.

Every head has the ``GMMHead`` interface: ``dim`` (D), ``param_dim`` (P, what the output
module emits per query token), ``nll(params, target)`` per token (fp32),
``sample(params, generator=..., **options)``, ``predict(params)``, and
``input_module(H)`` / ``output_module(H)``, the two trainable modules that ``DivotLLM``
keeps as ``input_resampler`` / ``output_resampler`` (token by token, or inside the learned
queries of ``model.resampler.kind=queries``: ``resampler.py``).

* ``gmm`` (``gmm.py``): continuous features (Divot's ViT features, VidTok KL latents).
* ``fsq_factorized`` / ``fsq_flat`` (``code_heads.py``): FSQ code digits.
"""

from __future__ import annotations

from collections.abc import Sequence

from divot_llm.config.schema import ModelConfig
from divot_llm.model.code_heads import FactorizedCodeHead, FlatCodeHead
from divot_llm.model.gmm import GMMHead

VideoHead = GMMHead | FactorizedCodeHead | FlatCodeHead
CODE_HEADS = {"fsq_factorized": FactorizedCodeHead, "fsq_flat": FlatCodeHead}


def build_video_head(
    model_cfg: ModelConfig, feature_dim: int, feature_levels: Sequence[int] | None
) -> VideoHead:
    """``model_cfg.head`` for features of ``feature_dim`` dims (``feature_levels``: the
    video tokenizer's, None for continuous features).

    Raises:
        ValueError: the head does not fit the tokenizer's features (a code head over
            continuous features or the GMM over codes), ``feature_levels`` of another
            length than D, or a flat head over too many codes.
    """
    head = model_cfg.head
    if (head == "gmm") != (feature_levels is None):
        features = (
            "continuous features"
            if feature_levels is None
            else f"FSQ code digits (levels {list(feature_levels)})"
        )
        wanted = "model.head=fsq_factorized or fsq_flat" if feature_levels is not None else "model.head=gmm"
        raise ValueError(
            f"model.head={head} does not fit the video tokenizer: video_tokenizer gives {features}; "
            f"set {wanted}, or choose a video_tokenizer whose features fit model.head={head}"
        )
    if feature_levels is None:
        return GMMHead.from_config(model_cfg.gmm, dim=feature_dim)
    if len(feature_levels) != feature_dim:
        raise ValueError(f"feature_levels has {len(feature_levels)} entries for {feature_dim}-d features")
    options = model_cfg.code_head
    return CODE_HEADS[head](feature_levels, temperature=options.temperature, top_k=options.top_k)
