"""The DynamiCrafter de-tokenizer's config (``conf/detokenizer/*.yaml`` merge onto it).

Apart from ``dynamicrafter.py`` so that composing a config does not import diffusers: the
schema registers here (``register_video_detokenizer_config``), the class in
``dynamicrafter.py``.
"""

from __future__ import annotations

import dataclasses

from omegaconf import MISSING

from divot_llm.config.schema import PathKind, checked
from divot_llm.detokenizers.registry import register_video_detokenizer_config


@register_video_detokenizer_config("dynamicrafter")
@dataclasses.dataclass
class DynamiCrafterConfig:
    """Video diffusion de-tokenizer: Resampler_DC conditioning -> DynamiCrafter-style 3D UNet
    (v-prediction, zero-terminal-SNR DDIM) -> SD KL-f8 VAE. Defaults are the released
    Divot shapes and sampler settings (reference §4)."""

    name: str = "divot"
    arch: str = "dynamicrafter"  # implementation: divot_llm/detokenizers/<arch>.py (registry key)
    # Divot_detokenizer_stage{1,2}.bin; null = random
    pretrained_path: str | None = checked(MISSING, path=PathKind.file)
    # SD VAE (diffusers folder or LDM file), loaded before pretrained_path
    vae_path: str | None = checked(None, path=PathKind.file_or_folder)
    feature_dim: int = checked(256, ge=1)  # D of the tokenizer features it decodes
    num_frames: int = checked(16, ge=1)  # output frames per clip
    fps: int = checked(8, ge=1)  # playback rate of the decoded clip (16 frames = 2 s)
    image_size: int = checked(256, ge=1)
    latent_channels: int = checked(4, ge=1)
    scale_factor: float = checked(0.18215, gt=0)
    # UNet (widths must be multiples of 32: lvdm hard-codes 32 GroupNorm groups)
    model_channels: int = checked(320, ge=1)
    channel_mult: list[int] = checked(default_factory=lambda: [1, 2, 4, 4], ge=1)
    num_res_blocks: int = checked(2, ge=1)
    attention_resolutions: list[int] = checked(default_factory=lambda: [4, 2, 1], ge=1)
    num_head_channels: int = checked(64, ge=1)
    transformer_depth: int = checked(1, ge=1)
    context_dim: int = checked(1024, ge=1)
    # first 77 context tokens -> "text" k/v, the rest -> "image" k/v
    text_context_len: int = checked(77, ge=0)
    dropout: float = checked(0.1, ge=0, le=1)
    gradient_checkpointing: bool = True  # per UNet block, while training
    # VAE (ch, ch_mult of the LDM ddconfig; 2 res blocks per level, as SD)
    vae_channels: int = checked(128, ge=1)
    vae_channel_mult: list[int] = checked(default_factory=lambda: [1, 2, 4, 4], ge=1)
    # image_proj_model (Resampler_DC): (B, N, feature_dim) -> (B, condition_tokens, context_dim)
    condition_tokens: int = checked(125, ge=1)
    condition_layers: int = checked(6, ge=1)
    condition_heads: int = checked(16, ge=1)
    condition_dim_head: int = checked(64, ge=1)
    # noise schedule and sampler
    num_train_timesteps: int = checked(1000, ge=1)
    beta_start: float = checked(0.00085, gt=0, lt=1)
    beta_end: float = checked(0.012, gt=0, lt=1)
    # lvdm names: uniform (1, 21, ..., 981) | uniform_trailing
    timestep_spacing: str = checked("uniform", choices=("uniform", "uniform_trailing"))
    ddim_steps: int = checked(50, ge=1)
    ddim_eta: float = checked(1.0, ge=0)
    guidance_scale: float = checked(7.5, ge=0)
    guidance_rescale: float = checked(0.7, ge=0, le=1)
    frame_stride: int = checked(3, ge=0)  # fs conditioning
    # training
    # clips conditioned on the zero-clip features (CFG dropout) [inferred]
    cond_drop_prob: float = checked(0.1, ge=0, le=1)
    # latents trained on: "sample" (the reference: posterior.sample()) | "mean" (the posterior
    # mean; for random test VAEs, whose posterior std ~1 leaves nothing to learn)
    vae_posterior: str = checked("sample", choices=("sample", "mean"))
