"""Video-LaVIT's motion tokenizer's config (``conf/motion_tokenizer/lavit*.yaml`` merge onto
it). Defaults are the released ``motion_tokenizer.bin`` (seed-systems.md b.1): a
``(2, 24, 20, 36)`` motion field -> 3 x 5 x 9 = 135 codes of a 1024 x 32 codebook.

What the release fixes and this config therefore does not offer: q and v biases in every
attention (no k bias), no dropout or drop-path, layer norms of eps 1e-5, 3x3x3
convolutions, the decoder as wide and as deep as the encoder."""

from __future__ import annotations

import dataclasses
import math

from divot_llm.config.schema import PathKind, checked
from divot_llm.tokenizers.motion.registry import register_motion_tokenizer_config


@register_motion_tokenizer_config("lavit")
@dataclasses.dataclass
class LaVITMotionConfig:
    """A Video-LaVIT motion tokenizer: factorized space-time attention encoder with 3D-conv
    downsampling, Linear-Tanh-Linear bottleneck, cosine nearest-neighbour codebook and the
    mirrored decoder."""

    name: str = "lavit_motion"
    arch: str = "lavit"  # implementation: divot_llm/tokenizers/motion/lavit.py (registry key)
    # the released motion_tokenizer.bin (raw state dict), a .safetensors, or a save_pretrained folder;
    # null = random init
    pretrained_path: str | None = checked(None, path=PathKind.file_or_folder)
    in_channels: int = checked(2, ge=1)  # (x, y)
    frames: int = checked(24, ge=1)  # F of the field (data.motion.clip_frames)
    height: int = checked(20, ge=1)  # (data.motion.height)
    width: int = checked(36, ge=1)  # (data.motion.width)
    embed_dim: int = checked(512, ge=1)  # width of encoder and decoder (a multiple of num_heads)
    num_heads: int = checked(8, ge=1)
    mlp_ratio: float = checked(4.0, gt=0)
    blocks_per_stage: int = checked(3, ge=1)  # the release hard-codes 3 (depth 12 = 4 stages x 3)
    # (t, h, w) stride, 1 or 2, of each stage's 3D-conv downsample (the decoder upsamples in
    # reverse); the release hard-codes these four. F, H, W must be multiples of the products.
    strides: list[list[int]] = dataclasses.field(
        default_factory=lambda: [[1, 2, 2], [2, 1, 1], [2, 1, 1], [2, 2, 2]]
    )
    code_dim: int = checked(32, ge=1)
    codebook_size: int = checked(1024, ge=2)
    # The tokenizer reads and reconstructs fields in data.motion.rescale units (the std
    # divided by 10); the video de-tokenizer's motion condition is the reconstruction
    # times this (the release's reconstruct / reconstruct_from_token).
    condition_scale: float = checked(0.1, gt=0)


def token_grid(config: LaVITMotionConfig) -> tuple[int, int, int]:
    """(t, h, w) of the codes: F, H, W divided by the products of the strides."""
    return tuple(
        size // math.prod(stride[axis] for stride in config.strides)
        for axis, size in enumerate((config.frames, config.height, config.width))
    )


def check_config(config: LaVITMotionConfig) -> None:
    """Raise ValueError for a config the networks cannot build as described."""
    if config.embed_dim % config.num_heads:
        raise ValueError(f"embed_dim {config.embed_dim} must be a multiple of num_heads {config.num_heads}")
    if not config.strides or any(len(stride) != 3 or set(stride) - {1, 2} for stride in config.strides):
        raise ValueError(
            f"strides must be a non-empty list of (t, h, w) strides of 1 or 2, got {config.strides}"
        )
    for axis, (name, size) in enumerate(
        (("frames", config.frames), ("height", config.height), ("width", config.width))
    ):
        factor = math.prod(stride[axis] for stride in config.strides)
        if size % factor:
            # the encoder would round down and the decoder could not come back to the size
            raise ValueError(
                f"{name} {size} must be a multiple of {factor}, the product of the strides' "
                f"{'thw'[axis]} entries {[stride[axis] for stride in config.strides]}"
            )
