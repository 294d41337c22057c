"""Builders for tiny, real tokenizer fixtures: random clips and tiny transformers CLIP
vision models with the divot_tiny ViT shape."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from divot_llm.tokenizers.divot_config import DivotTokenizerConfig


def random_clips(config: DivotTokenizerConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """``(B, F, 3, input_size, input_size)`` frames uniform in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    size = config.input_size
    return torch.rand(batch, config.frames_per_clip, 3, size, size, generator=gen) * 2 - 1


def vision_config(**overrides) -> CLIPVisionConfig:
    """The divot_tiny ViT shape as a CLIPVisionConfig (open_clip's exact GELU, eps 1e-5)."""
    fields = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                  patch_size=14, image_size=56, hidden_act="gelu", layer_norm_eps=1e-5)
    return CLIPVisionConfig(**{**fields, **overrides})


def vision_model(seed: int = 0, **overrides) -> CLIPVisionModel:
    """A randomly initialised tiny CLIPVisionModel (SDPA attention, eval mode)."""
    torch.manual_seed(seed)
    return CLIPVisionModel._from_config(vision_config(**overrides), attn_implementation="sdpa").eval()
