"""Caption(s) -> video features, by the reference's two-phase generation: text until
``<vid>``, then one forward over ``<frame>`` + N queries and a GMM sample per token."""

from __future__ import annotations

import torch

from divot_llm.text import templates
from divot_llm.text.tokenizer import DivotTextTokenizer


def generation_prompt_ids(
    tokenizer: DivotTextTokenizer, caption: str, media: str, instruct: bool
) -> list[int]:
    """``[bos] [INST] Generate a video of {caption} [/INST]\\n`` (SFT-generation models) or
    ``[bos] {caption}`` (a pretrained model); the caption is always ordinary text."""
    if instruct:
        return [tokenizer.bos_id, *tokenizer.encode(templates.generation_prompt(caption, media))]
    return [tokenizer.bos_id, *tokenizer.encode_text(caption)]


def generate_features_for_captions(
    model,
    tokenizer: DivotTextTokenizer,
    captions: list[str],
    media: str = "video",
    instruct: bool = True,
    var_scale: float | None = None,
    sample: bool = True,
    seed: int = 0,
    max_new_tokens: int = 64,
) -> torch.Tensor:
    """``(B, N, D)`` features for each caption.

    Args:
        instruct: SFT-generation models get ``[INST] Generate a video of ... [/INST]\\n``;
            a pretrained model gets the bare caption (its training template) and no text
            phase.
        var_scale: GMM sampling variance scale (default: the model's ``sample_var_scale``).
        sample: draw from the GMM (True) or take its weighted mean.
    """
    prompts = [generation_prompt_ids(tokenizer, c, media, instruct) for c in captions]
    # the pretrain template puts <vid> right after the caption: no text phase
    text_budget = max_new_tokens if instruct else 0
    generator = torch.Generator(device=model.device).manual_seed(seed)
    torch.manual_seed(seed)
    out = model.generate_features(
        tokenizer,
        prompts,
        media=media,
        max_new_tokens=text_budget,
        var_scale=var_scale,
        sample=sample,
        generator=generator,
    )
    return out.feats
