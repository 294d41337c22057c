"""Caption(s) -> video features, by the reference's two-phase generation: text until
``<vid>``, then one forward over ``<frame>`` + N queries and a GMM sample per token."""

from __future__ import annotations

import torch

from divot_llm.text import templates
from divot_llm.text.tokenizer import DivotTextTokenizer


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
    if instruct:
        prompts = [
            [tokenizer.bos_id, *tokenizer.encode(templates.generation_prompt(c, media))] for c in captions
        ]
        text_budget = max_new_tokens
    else:
        prompts = [[tokenizer.bos_id, *tokenizer.encode(c)] for c in captions]
        text_budget = 0  # the pretrain template puts <vid> right after the caption
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
