"""Video-LaVIT's keyframe tokenizer's config (``conf/keyframe_tokenizer/lavit*.yaml`` merge
onto it). Defaults are the release (``visual_tokenizer/`` of rain1011/Video-LaVIT-v1,
seed-systems.md b.1): a 224 x 224 image through the frozen EVA-CLIP ViT-G/14 (1408 wide,
40 blocks) to 256 patch features, of which the token predictor keeps a variable number; the
12-block token merger, then 32-dim codes of a 16384-entry codebook (or, for understanding,
``vit_proj`` to the LLM's 4096). The codes -> embeddings decoder (12 blocks, 1408 wide)
returns the image de-tokenizer's condition: 256 x (768 + 1280) context and a 1280 pooled vector.

What the release fixes and this config therefore does not offer: q and v biases in the
ViT's attention (no k bias), biases everywhere in the merger and decoder, layer norms of eps
1e-6 in the ViT and 1e-5 elsewhere, the predictor's widths (D, D/2, D/4, 2), no dropout."""

from __future__ import annotations

import dataclasses

from divot_llm.config.schema import PathKind, checked
from divot_llm.tokenizers.keyframe.registry import register_keyframe_tokenizer_config


@register_keyframe_tokenizer_config("lavit")
@dataclasses.dataclass
class LaVITKeyframeConfig:
    """LaVIT's dynamic visual tokenizer (EVA-CLIP ViT, token predictor, token merger, cosine
    codebook, ``vit_proj``) and its codes -> embeddings decoder."""

    name: str = "lavit_keyframe"
    arch: str = "lavit"  # implementation: divot_llm/tokenizers/keyframe/lavit.py (registry key)
    # the released visual_tokenizer/tokenizer_encoder.bin (a raw state dict; an
    # eva_vitg_psz14.bin beside it supplies encoder.* as upstream loads it), a .safetensors, or a
    # folder holding it; null = random init
    pretrained_path: str | None = checked(None, path=PathKind.file_or_folder)
    # visual_tokenizer/highres_tokenizer_decoder.bin (or a folder holding it); null = random init
    decoder_path: str | None = checked(None, path=PathKind.file_or_folder)
    build_decoder: bool = True  # false: encode only (no decode_embeds), ~0.4B parameters fewer
    input_size: int = checked(224, ge=1)  # S of the (S, S) images encode takes
    patch_size: int = checked(14, ge=1)  # S must be a multiple: (S / patch)^2 patches
    vit_width: int = checked(1408, ge=2)  # the ViT's, the predictor's and the merger's width
    vit_depth: int = checked(40, ge=1)
    vit_heads: int = checked(16, ge=1)
    vit_mlp_ratio: float = checked(4.3637, gt=0)
    vit_embed_dim: int = checked(1024, ge=1)  # EVA-CLIP's image-text head (in the weights, unused)
    merger_depth: int = checked(12, ge=1)
    merger_heads: int = checked(16, ge=1)
    merger_mlp_ratio: float = checked(4.3637, gt=0)
    codebook_size: int = checked(16384, ge=2)
    code_dim: int = checked(32, ge=1)
    feature_dim: int = checked(4096, ge=1)  # vit_proj's output: the LLM's width (LLaMA-7B)
    decoder_width: int = checked(1408, ge=1)
    decoder_depth: int = checked(12, ge=1)
    decoder_heads: int = checked(16, ge=1)
    decoder_mlp_ratio: float = checked(4.3637, gt=0)
    decoder_out_dim: int = checked(1408, ge=1)  # the reconstructed ViT feature width
    # per-token context of the image de-tokenizer's UNet: the concatenation of one projection
    # per entry (SDXL's two text encoders' widths), embed_dim = their sum
    context_dims: list[int] = dataclasses.field(default_factory=lambda: [768, 1280])
    pooled_dim: int = checked(1280, ge=1)  # the attention-pooled vector (SDXL's pooled text embedding)


def num_patches(config: LaVITKeyframeConfig) -> int:
    """(input_size / patch_size)^2: the ViT's patches, the most codes an image gets."""
    return (config.input_size // config.patch_size) ** 2


def check_config(config: LaVITKeyframeConfig) -> None:
    """Raise ValueError for a config the networks cannot build as described."""
    if config.input_size % config.patch_size:
        raise ValueError(
            f"input_size {config.input_size} must be a multiple of patch_size {config.patch_size}"
        )
    for width, heads, what in (
        (config.vit_width, config.vit_heads, "vit"),
        (config.vit_width, config.merger_heads, "merger"),
        (config.decoder_width, config.decoder_heads, "decoder"),
        (config.decoder_out_dim, config.decoder_heads, "decoder_out"),
    ):
        if width % heads:
            raise ValueError(f"{what} width {width} must be a multiple of its heads {heads}")
    if config.vit_width % 4:
        raise ValueError(
            f"vit_width {config.vit_width} must be a multiple of 4 (the token predictor halves it twice)"
        )
    if not config.context_dims or min(config.context_dims) < 1:
        raise ValueError(
            f"context_dims must be a non-empty list of positive widths, got {config.context_dims}"
        )
