"""Video-LaVIT's keyframe (image) de-tokenizer: the release's ``image_detokenizer/{vae,scheduler,unet}``.

An SDXL-style latent diffusion model from diffusers: ``AutoencoderKL`` (f = 8),
``UNet2DConditionModel`` with ``text_time`` added conditions, and the scheduler its folder
names (Euler-Ancestral or DDIM, as the release's loader picks by ``_class_name``). It is
conditioned on the keyframe tokenizer's ``decode_embeds(codes)``: the context ``(B, N, D)``
the UNet cross-attends to and the pooled vector ``(B, P)`` of its added embedding, with the
time ids ``original size + crop top-left + target size`` (``(H, W, 0, 0, H, W)``).

``decode`` is the release's ``image_decoding``: classifier-free guidance with all-zero
context and pooled vector as the unconditional branch (``guidance`` 3.0), 50 steps, the
latents drawn from ``seed``; the VAE decodes ``latents / scaling_factor``. Nothing is
trained here (the release's weights, or ``random`` for tests).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from torch import nn

from divot_llm.detokenizers.base import random_draw

SCHEDULERS = {cls.__name__: cls for cls in (EulerAncestralDiscreteScheduler, DDIMScheduler)}
TIME_IDS = 6  # original (h, w), crop top-left (y, x), target (h, w)


class LaVITImageDetokenizer(nn.Module):
    """Context ``(B, N, D)`` + pooled ``(B, P)`` -> images ``(B, 3, H, W)`` in [-1, 1].

    Example:
        >>> detok = LaVITImageDetokenizer.from_pretrained("Video-LaVIT-v1/image_detokenizer")
        >>> context_bnd, pooled_bp = keyframe_tokenizer.decode_embeds(codes)
        >>> images_b3hw = detok.decode(context_bnd, pooled_bp, height=512, width=512)
    """

    def __init__(self, vae: AutoencoderKL, unet: UNet2DConditionModel, scheduler) -> None:
        super().__init__()
        self.vae, self.unet, self.scheduler = vae, unet, scheduler
        self.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LaVITImageDetokenizer:
        """The release's ``image_detokenizer/`` folder (or ``save_pretrained``'s), fp32."""
        folder = Path(path)
        name = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
        scheduler = SCHEDULERS.get(name, DDIMScheduler).from_pretrained(folder, subfolder="scheduler")
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        return cls(vae, unet, scheduler).eval()

    @classmethod
    def random(cls, context_dim: int, pooled_dim: int, seed: int = 0) -> LaVITImageDetokenizer:
        """A tiny randomly initialised one of the release's structure (tests, the tiny
        end-to-end): 2-level UNet of width 32 with ``text_time`` conditioning, a 4-level VAE
        of width 32 (f = 8), Euler-Ancestral."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(
                sample_size=8,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                layers_per_block=1,
                attention_head_dim=(2, 4),
                cross_attention_dim=context_dim,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=pooled_dim + TIME_IDS * 8,
            )
            vae = AutoencoderKL(
                block_out_channels=(32, 32, 32, 32),
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=1,
                latent_channels=4,
            )
        scheduler = EulerAncestralDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
        )
        return cls(vae, unet, scheduler).eval()

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """``vae/``, ``scheduler/``, ``unet/`` as diffusers saves them (the release's layout)."""
        folder = Path(path)
        self.vae.save_pretrained(folder / "vae")
        self.scheduler.save_pretrained(folder / "scheduler")
        self.unet.save_pretrained(folder / "unet")

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @torch.no_grad()
    def decode(
        self,
        context_bnd: torch.Tensor,
        pooled_bp: torch.Tensor,
        height: int = 512,
        width: int = 512,
        steps: int = 50,
        guidance: float = 3.0,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images ``(B, 3, height, width)`` in [-1, 1] (module docstring); ``generator``
        (CPU) defaults to one seeded with ``seed``."""
        if context_bnd.ndim != 3 or pooled_bp.ndim != 2 or len(context_bnd) != len(pooled_bp):
            raise ValueError(
                f"expected context (B, N, D) and pooled (B, P), got {tuple(context_bnd.shape)} and {tuple(pooled_bp.shape)}"
            )
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        draw = random_draw(generator, self.device)
        batch, dtype = len(context_bnd), self.unet.dtype
        context = torch.cat([torch.zeros_like(context_bnd), context_bnd]).to(self.device, dtype)
        pooled = torch.cat([torch.zeros_like(pooled_bp), pooled_bp]).to(self.device, dtype)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=self.device)
        added = {"text_embeds": pooled, "time_ids": time_ids.repeat(2 * batch, 1)}

        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        shape = (batch, self.unet.config.in_channels, height // factor, width // factor)
        latents = draw(torch.randn, shape) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            out = self.unet(
                model_in.to(dtype), t, encoder_hidden_states=context, added_cond_kwargs=added
            ).sample
            uncond, cond = out.float().chunk(2)
            latents = scheduler.step(
                uncond + guidance * (cond - uncond), t, latents, generator=generator
            ).prev_sample
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return images.float().clamp(-1, 1)
