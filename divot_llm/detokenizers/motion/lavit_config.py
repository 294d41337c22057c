"""Video-LaVIT's motion-conditioned video de-tokenizer's config (``conf/motion_detokenizer/lavit*.yaml``
merge onto it). Defaults are the release's ``video_detokenizer/`` (seed-systems.md b.1): SVD's
spatio-temporal UNet with 10 input channels, its temporal-decoder VAE (f = 8), the Euler
scheduler, and the 12-block motion condition encoder; 24 frames of 256 x 256 by default.

What the release fixes and this config therefore does not offer: the motion condition grid
(16 x 16 positions; the UNet's attention asserts 256 condition tokens), the 2 motion channels,
the UNet's block kinds (cross-attention in every level but the deepest), the q/v-biased
attention of the condition encoder, no temporal position embedding in it."""

from __future__ import annotations

import dataclasses

from divot_llm.config.schema import PathKind, checked
from divot_llm.detokenizers.motion.registry import register_motion_detokenizer_config


@register_motion_detokenizer_config("lavit")
@dataclasses.dataclass
class LaVITVideoDetokenizerConfig:
    """A keyframe + motion field -> clip de-tokenizer (``LaVITVideoDetokenizer``)."""

    name: str = "lavit_video_detokenizer"
    arch: str = "lavit"  # implementation: divot_llm/detokenizers/motion/lavit.py (registry key)
    # the release's video_detokenizer/ folder ({vae,scheduler,unet}; the unet weights also hold
    # motion_encoder.*) or a save_pretrained folder of ours; null = random init from the seed
    pretrained_path: str | None = checked(None, path=PathKind.folder)
    # then, when set, the release's video_3d_unet.bin (unet.* + motion_encoder.*) over the
    # folder's UNet and motion encoder: the reconstruction notebook's weights
    unet_weights: str | None = checked(None, path=PathKind.file)
    num_frames: int = checked(24, ge=1)  # F of a decoded clip (= the motion field's frames)
    height: int = checked(256, ge=8)  # of decoded clips, a multiple of the VAE's factor
    width: int = checked(256, ge=8)

    # --- UNet (diffusers UNetSpatioTemporalConditionModel arguments)
    block_out_channels: list[int] = dataclasses.field(default_factory=lambda: [320, 640, 1280, 1280])
    num_attention_heads: list[int] = dataclasses.field(default_factory=lambda: [5, 10, 10, 20])
    layers_per_block: int = checked(2, ge=1)
    cross_attention_dim: int = checked(1024, ge=1)  # = the condition encoder's output width
    addition_time_embed_dim: int = checked(256, ge=2)  # per added time id (3 of them)
    unet_num_frames: int = checked(25, ge=1)  # the UNet config's num_frames (unused by its forward)

    # --- motion condition encoder (upstream's MotionConditionEncoder)
    encoder_dim: int = checked(512, ge=1)
    encoder_heads: int = checked(8, ge=1)
    encoder_depth: int = checked(12, ge=1)
    encoder_mlp_ratio: float = checked(4.0, gt=0)

    # --- VAE (diffusers AutoencoderKLTemporalDecoder); the factor is 2^(levels - 1)
    vae_block_out_channels: list[int] = dataclasses.field(default_factory=lambda: [128, 256, 512, 512])
    vae_layers_per_block: int = checked(2, ge=1)
    latent_channels: int = checked(4, ge=1)
    scaling_factor: float = checked(0.18215, gt=0)

    # --- conditioning and sampling (upstream's reconstruct_from_token defaults)
    fps: int = checked(6, ge=0)  # added_time_ids[0]
    motion_bucket_id: int = checked(127, ge=0)  # added_time_ids[1]
    noise_aug_strength: float = checked(0.02, ge=0)  # keyframe noise, also added_time_ids[2]
    # the motion field arrives in the motion tokenizer's units (data.motion.rescale: the std
    # divided by 10); the condition is the field times this (the release's 1/10)
    condition_scale: float = checked(0.1, gt=0)
    steps: int = checked(25, ge=1)
    min_guidance: float = checked(1.0, ge=0)  # frame 0's guidance scale ...
    max_guidance: float = checked(4.0, ge=0)  # ... rising linearly to the last frame's
    decode_chunk_size: int = checked(8, ge=1)  # frames per VAE decode call

    # --- training (stage=lavit_detok): SVD's EDM log-normal sigma draw
    p_mean: float = 0.7
    p_std: float = checked(1.6, gt=0)
    # probability of a training clip's unconditional branch (motion and keyframe latents
    # zeroed: what classifier-free guidance subtracts at sampling)
    uncond_prob: float = checked(0.1, ge=0, le=1)


def vae_factor(config: LaVITVideoDetokenizerConfig) -> int:
    """Pixels per latent cell along each side (8 for the release)."""
    return 2 ** (len(config.vae_block_out_channels) - 1)


def check_config(config: LaVITVideoDetokenizerConfig) -> None:
    """Raise ValueError for a config the networks cannot build as described."""
    if len(config.num_attention_heads) != len(config.block_out_channels):
        raise ValueError(
            f"num_attention_heads {config.num_attention_heads} needs one entry per UNet level "
            f"(block_out_channels {config.block_out_channels})"
        )
    if len(config.block_out_channels) < 2:
        raise ValueError("the UNet needs at least 2 levels (block_out_channels)")
    for channels in (*config.block_out_channels, *config.vae_block_out_channels):
        if channels % 32:
            raise ValueError(
                f"UNet and VAE widths must be multiples of 32 (group norms of 32), got {channels}"
            )
    if config.encoder_dim % config.encoder_heads:
        raise ValueError(
            f"encoder_dim {config.encoder_dim} must be a multiple of encoder_heads {config.encoder_heads}"
        )
    factor = vae_factor(config)
    if config.height % factor or config.width % factor:
        raise ValueError(
            f"height x width {config.height} x {config.width} must be multiples of the VAE's {factor}"
        )
