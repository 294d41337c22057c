"""Video-LaVIT's motion tokenizer's config (``conf/motion_tokenizer/lavit*.yaml`` merge onto
it). Defaults are the released ``motion_tokenizer.bin`` (seed-systems.md b.1): a
``(2, 24, 20, 36)`` motion field -> 3 x 5 x 9 = 135 codes of a 1024 x 32 codebook."""

from __future__ import annotations

import dataclasses

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
    # the released motion_tokenizer.bin (raw state dict), or a save_pretrained folder; null = random init
    pretrained_path: str | None = checked(None, path=PathKind.file_or_folder)
    in_channels: int = checked(2, ge=1)  # (x, y)
    frames: int = checked(24, ge=1)  # F of the field (data.motion.clip_frames)
    height: int = checked(20, ge=1)  # (data.motion.height)
    width: int = checked(36, ge=1)  # (data.motion.width)
    embed_dim: int = checked(512, ge=1)
    num_heads: int = checked(8, ge=1)
    mlp_ratio: float = checked(4.0, gt=0)
    blocks_per_stage: int = checked(3, ge=1)  # upstream hard-codes 3 (depth 12)
    # (t, h, w) stride of each stage's 3D-conv downsample (the decoder upsamples in reverse)
    strides: list[list[int]] = dataclasses.field(
        default_factory=lambda: [[1, 2, 2], [2, 1, 1], [2, 1, 1], [2, 2, 2]]
    )
    code_dim: int = checked(32, ge=1)
    codebook_size: int = checked(1024, ge=2)
    output_scale: float = checked(0.1, gt=0)  # the decoder's output is multiplied by this
