"""The VDM de-tokenizer's config (``conf/detokenizer/vdm_*.yaml`` merge onto it).

Apart from ``vdm_detokenizer.py`` so that composing a config does not import the model: the
schema registers here, the class in ``vdm_detokenizer.py``. (The arch is named after its
module, as the registry expects: ``vdm.py`` is the diffusion model itself.)
"""

from __future__ import annotations

import dataclasses

from omegaconf import MISSING

from divot_llm.config.schema import PathKind, checked
from divot_llm.detokenizers.registry import register_video_detokenizer_config


@register_video_detokenizer_config("vdm_detokenizer")
@dataclasses.dataclass
class VdmDetokenizerConfig:
    """Pixel-space video diffusion de-tokenizer: the tokenizer's ``(N, D)`` features, pooled
    to one ``cond_dim`` vector, condition a ``Unet3D`` + ``GaussianDiffusion`` (the seed
    video-diffusion-pytorch's conditioning: a vector concatenated to the time embedding).
    Unet/diffusion fields carry the seed's names."""

    name: str = "vdm"
    arch: str = "vdm_detokenizer"  # implementation: divot_llm/detokenizers/<arch>.py (registry key)
    # a save_pretrained weights file (detokenizer.safetensors), or a seed video-diffusion-pytorch
    # Trainer checkpoint (any other suffix, e.g. model-10.pt: its UNet + schedule, the pooling
    # random-init); null = random init
    pretrained_path: str | None = checked(MISSING, path=PathKind.file)
    # which state of a seed Trainer checkpoint to load: "ema" (the averaged weights the seed
    # samples with) | "model" (the raw training weights)
    pretrained_weights: str = checked("ema", choices=("ema", "model"))
    feature_dim: int = checked(16, ge=1)  # D of the tokenizer features it decodes
    num_frames: int = checked(8, ge=1)  # output frames per clip
    fps: int = checked(8, ge=1)  # playback rate of the decoded clip
    image_size: int = checked(16, ge=1)  # H = W, divisible by 2 ** (len(dim_mults) - 1)
    # feature tokens -> cond vector: "attention" (one learned query attends over the N
    # tokens) | "mean" (mean over tokens, then a linear map) | "none" (the one token is the
    # cond vector, as the seed feeds its text embedding: N = 1 and feature_dim == cond_dim)
    pooling: str = checked("attention", choices=("attention", "mean", "none"))
    pooling_heads: int = checked(2, ge=1)  # attention pooling heads; must divide feature_dim
    # also let the UNet attend to the N tokens themselves (a cross-attention after every
    # spatial attention; not in the seed's state dicts), the pooled vector still conditioning
    cross_attention: bool = False
    # Unet3D
    dim: int = checked(16, ge=1)
    dim_mults: list[int] = checked(default_factory=lambda: [1, 2], ge=1)
    cond_dim: int = checked(32, ge=1)
    attn_heads: int = checked(2, ge=1)
    attn_dim_head: int = checked(16, ge=1)
    init_kernel_size: int = checked(7, ge=1)
    use_sparse_linear_attn: bool = True
    # GaussianDiffusion
    timesteps: int = checked(1000, ge=1)
    beta_schedule: str = checked("cosine", choices=("cosine", "linear"))
    loss_type: str = checked("l2", choices=("l1", "l2"))
    # what the UNet predicts: pred_noise (the seed's; its checkpoints need it) | pred_x0 |
    # pred_v (learns a small clip's colours in far fewer steps: the demo's)
    objective: str = checked("pred_noise", choices=("pred_noise", "pred_x0", "pred_v"))
    # sampling: sampler steps (an evenly spaced subset of the timesteps, all of them when
    # >= timesteps; = timesteps is the seed's full DDPM chain) and the classifier-free guidance scale (the seed's cond_scale)
    sample_steps: int = checked(50, ge=1)
    # decode's sampler: "ancestral" (the seed's DDPM posterior over the spaced steps) | "ddim"
    # (GaussianDiffusion.sample_ddim, diffusers' DDIMScheduler on the same schedule; good
    # clips in far fewer steps), with DDIM's noise share ddim_eta (0 = deterministic given
    # x_T; 1 with every timestep = ancestral)
    sampler: str = checked("ancestral", choices=("ancestral", "ddim"))
    ddim_eta: float = checked(0.0, ge=0)
    guidance_scale: float = checked(2.0, ge=0)
    # training: clips conditioned on the learned null embedding (the seed's null_cond_prob)
    # and clips whose temporal attention sees only their own frame (prob_focus_present)
    cond_drop_prob: float = checked(0.1, ge=0, le=1)
    prob_focus_present: float = checked(0.0, ge=0, le=1)
