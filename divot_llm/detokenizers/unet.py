"""The DynamiCrafter 3D UNet (lvdm ``openaimodel3d.UNetModel``) as Divot configures it.

A 2D latent UNet applied per frame, with a temporal conv block after every ResBlock and a
temporal transformer after every spatial transformer, plus one extra temporal transformer
(``init_attn``) after the input convolution. Its conditioning is the resampled tokenizer
features (cross-attention, repeated for every frame), the diffusion timestep and the frame
stride ``fs`` (both sinusoidal, through ``time_embed`` / ``fps_embedding``).

Divot's settings, fixed here rather than configurable: 4 input channels (no image-latent
concat), ``use_linear`` projections, temporal self-attention only, no relative positions,
no causal mask, learnable image cross-attention scale, ``fs`` conditioning, no
``resblock_updown``, no scale-shift norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.models.embeddings import get_timestep_embedding
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from divot_llm.detokenizers.unet_layers import (
    Downsample,
    GroupNorm32,
    ResBlock,
    SpatialTransformer,
    TemporalTransformer,
    TimestepEmbedSequential,
    Upsample,
    zero_module,
)

INIT_ATTN_HEADS = 8  # the reference hard-codes 8 heads for init_attn (d_head = num_head_channels)


def sinusoidal_embedding(values_b: torch.Tensor, dim: int) -> torch.Tensor:
    """LDM's timestep embedding: ``[cos(v * f_i), sin(v * f_i)]`` with
    ``f_i = 10000^(-i / (dim/2))``, ``(B,)`` -> ``(B, dim)`` fp32."""
    return get_timestep_embedding(values_b, dim, flip_sin_to_cos=True, downscale_freq_shift=0)


class DynamiCrafterUNet(nn.Module):
    """Noisy latents ``(B, C, T, h, w)`` + timesteps + context -> v prediction, same shape.

    Args:
        in_channels: latent channels in (4).
        out_channels: channels predicted (4).
        model_channels: base width (320).
        channel_mult: width multiplier per level ([1, 2, 4, 4]).
        num_res_blocks: ResBlocks per level (2; the decoder side has one more).
        attention_resolutions: downsample factors with attention ([4, 2, 1]).
        num_head_channels: width per attention head (64).
        transformer_depth: blocks per spatial/temporal transformer (1).
        context_dim: width of the conditioning tokens (1024).
        text_context_len: context tokens on the "text" k/v path; the rest go to the "image"
            path (77 of 125).
        dropout: ResBlock and temporal-conv dropout (0.1).
        default_fs: frame stride used when ``fs`` is not given (3).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        model_channels: int,
        channel_mult: Sequence[int],
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        num_head_channels: int,
        transformer_depth: int,
        context_dim: int,
        text_context_len: int,
        dropout: float,
        default_fs: int,
    ) -> None:
        super().__init__()
        self.model_channels = model_channels
        self.default_fs = default_fs
        self.gradient_checkpointing = False
        emb_dim = 4 * model_channels

        def embedding_mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        def attention_layers(channels: int) -> list[nn.Module]:
            heads = channels // num_head_channels
            return [
                SpatialTransformer(
                    channels, heads, num_head_channels, transformer_depth, context_dim, text_context_len
                ),
                TemporalTransformer(channels, heads, num_head_channels, transformer_depth),
            ]

        def res_block(channels: int, out: int) -> ResBlock:
            return ResBlock(channels, emb_dim, out, dropout)

        self.time_embed = embedding_mlp()
        self.fps_embedding = embedding_mlp()
        zero_module(self.fps_embedding[-1])  # fs starts with no effect

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))]
        )
        self.init_attn = TimestepEmbedSequential(
            TemporalTransformer(
                model_channels, INIT_ATTN_HEADS, num_head_channels, transformer_depth, use_linear=False
            )
        )
        skip_channels = [model_channels]
        channels, factor = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(channels, mult * model_channels)]
                channels = mult * model_channels
                if factor in attention_resolutions:
                    layers += attention_layers(channels)
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(channels)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(channels)))
                skip_channels.append(channels)
                factor *= 2

        self.middle_block = TimestepEmbedSequential(
            res_block(channels, channels), *attention_layers(channels), res_block(channels, channels)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(channels + skip_channels.pop(), mult * model_channels)]
                channels = mult * model_channels
                if factor in attention_resolutions:
                    layers += attention_layers(channels)
                if level and i == num_res_blocks:
                    layers.append(Upsample(channels))
                    factor //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(channels),
            nn.SiLU(),
            zero_module(nn.Conv2d(model_channels, out_channels, 3, padding=1)),
        )

    def forward(
        self,
        x_bcthw: torch.Tensor,
        timesteps_b: torch.Tensor,
        context_bsc: torch.Tensor,
        fs_b: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict v for noisy latents.

        Args:
            x_bcthw: noisy latents ``(B, C, T, h, w)``.
            timesteps_b: diffusion timesteps ``(B,)`` (or a scalar, broadcast).
            context_bsc: conditioning tokens ``(B, S, context_dim)``; the same for every frame.
            fs_b: frame stride ``(B,)``; ``default_fs`` when None.

        Returns:
            ``(B, out_channels, T, h, w)``.
        """
        batch, _, frames, _, _ = x_bcthw.shape
        device, dtype = x_bcthw.device, x_bcthw.dtype
        timesteps_b = torch.as_tensor(timesteps_b, device=device).expand(batch)
        if fs_b is None:
            fs_b = torch.full((batch,), self.default_fs, device=device)
        fs_b = torch.as_tensor(fs_b, device=device).expand(batch)
        emb_be = self.time_embed(sinusoidal_embedding(timesteps_b, self.model_channels).to(dtype))
        emb_be = emb_be + self.fps_embedding(sinusoidal_embedding(fs_b, self.model_channels).to(dtype))

        # Frames fold into the batch; every frame sees the same embedding and context.
        emb_ne = emb_be.repeat_interleave(frames, dim=0)
        context_nsc = context_bsc.to(dtype).repeat_interleave(frames, dim=0)
        h_nchw = rearrange(x_bcthw, "b c t h w -> (b t) c h w")

        skips = []
        for index, block in enumerate(self.input_blocks):
            h_nchw = self._run(block, h_nchw, emb_ne, context_nsc, frames)
            if index == 0:
                h_nchw = self._run(self.init_attn, h_nchw, emb_ne, context_nsc, frames)
            skips.append(h_nchw)
        h_nchw = self._run(self.middle_block, h_nchw, emb_ne, context_nsc, frames)
        for block in self.output_blocks:
            h_nchw = self._run(block, torch.cat([h_nchw, skips.pop()], dim=1), emb_ne, context_nsc, frames)
        return rearrange(self.out(h_nchw), "(b t) c h w -> b c t h w", b=batch)

    def _run(self, block: TimestepEmbedSequential, *args) -> torch.Tensor:
        # Activation checkpointing per block (the reference's use_checkpoint) when training.
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)
