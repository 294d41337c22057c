"""The Divot tokenizer's config (``conf/video_tokenizer/divot*.yaml`` merge onto it).

Apart from ``divot.py`` so that composing a config does not import transformers: the
schema registers here (``register_video_tokenizer_config``), the class in ``divot.py``.
"""

from __future__ import annotations

import dataclasses

from omegaconf import MISSING

from divot_llm.config.schema import PathKind, checked
from divot_llm.tokenizers.registry import register_video_tokenizer_config


@register_video_tokenizer_config("divot")
@dataclasses.dataclass
class DivotTokenizerConfig:
    """The Divot tokenizer: CLIP ViT -> temporal encoder -> pool -> ST transformer ->
    Perceiver resampler. Defaults are the released ViT-H/14 shapes (reference §3)."""

    name: str = "divot"
    arch: str = "divot"  # implementation: divot_llm/tokenizers/<arch>.py (registry key)
    # Divot_tokenizer.bin (everything but the ViT); null = random
    pretrained_path: str | None = checked(MISSING, path=PathKind.file)
    # HF CLIP(Vision)Model folder or open_clip checkpoint; null = random
    vit_path: str | None = checked(MISSING, path=PathKind.file_or_folder)
    frames_per_clip: int = checked(5, ge=1)
    # frame side (H = W) the tokenizer was trained on; others are resized
    input_size: int = checked(256, ge=1)
    vit_image_size: int = checked(224, ge=1)  # ViT input resolution after the in-module resize
    vit_width: int = checked(1280, ge=1)
    vit_layers: int = checked(32, ge=1)
    vit_heads: int = checked(16, ge=1)
    vit_mlp_dim: int = checked(5120, ge=1)
    vit_patch_size: int = checked(14, ge=1)
    temporal_width: int = checked(768, ge=1)
    temporal_layers: int = checked(6, ge=1)
    temporal_heads: int = checked(12, ge=1)
    hidden_size: int = checked(1024, ge=1)  # temporal output / ST transformer width
    pool_size: int = checked(5, ge=1)  # per-frame adaptive pool to pool_size x pool_size tokens
    st_layers: int = checked(4, ge=1)
    st_heads: int = checked(8, ge=1)
    resampler_layers: int = checked(6, ge=1)
    resampler_heads: int = checked(16, ge=1)
    resampler_dim_head: int = checked(64, ge=1)
    num_tokens: int = checked(64, ge=1)  # N tokens per clip
    feature_dim: int = checked(256, ge=1)  # D
