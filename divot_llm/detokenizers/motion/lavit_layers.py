"""The networks of Video-LaVIT's video de-tokenizer (``lavit.py`` wraps them).

* ``MotionConditionEncoder``: a motion field resized to the 16 x 16 condition grid,
  ``(B, 2, F, 16, 16)`` -> ``(B, F, 256, out_dim)``, the UNet's cross-attention context.
  Names are the release's (``blocks.{i}.*`` as the motion tokenizer's blocks, ``in_proj``,
  ``pos_embed``, ``norm``, ``out_proj``); the blocks are part 1's ``SpaceTimeBlock``.
* ``MotionUNet``: diffusers' ``UNetSpatioTemporalConditionModel`` (its modules, config,
  key names) with the release's two changes to what the context means. Stock SVD
  cross-attends every frame to one image embedding ``(B, 1, D)``; here every frame's
  spatial attention reads that frame's 256 motion tokens, and every latent position's
  temporal attention reads the F motion tokens of its cell of the condition grid
  (nearest-resized to the block's resolution). diffusers' down/mid/up blocks hand the
  context through untouched, so only the UNet's forward (no repeat of the context over
  frames) and the spatio-temporal transformer's forward differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel
from torch import nn

from divot_llm.tokenizers.motion.lavit_layers import NORM_EPS, SpaceTimeBlock

CONDITION_GRID = 16  # the condition encoder's positions per side (the release fixes 16 x 16)
MOTION_CHANNELS = 2


class MotionConditionEncoder(nn.Module):
    """``(B, 2, F, g, g)`` (g = ``CONDITION_GRID``) -> ``(B, F, g * g, out_dim)``: per-position
    input projection plus a learnt spatial position embedding, factorized space-time
    blocks, a final norm and the output projection."""

    def __init__(self, dim: int, num_heads: int, depth: int, mlp_ratio: float, out_dim: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SpaceTimeBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.in_proj = nn.Linear(MOTION_CHANNELS, dim)
        self.out_proj = nn.Linear(dim, out_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, CONDITION_GRID * CONDITION_GRID, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, motion_b2fgg: torch.Tensor) -> torch.Tensor:
        batch, channels, frames = motion_b2fgg.shape[:3]
        x_btsc = motion_b2fgg.permute(0, 2, 3, 4, 1).reshape(batch, frames, -1, channels)
        x_btsd = self.in_proj(x_btsc) + self.pos_embed.unsqueeze(0)
        for block in self.blocks:
            x_btsd = block(x_btsd)
        return self.out_proj(self.norm(x_btsd))


def temporal_context(context_btsd: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, F, g*g, D)`` -> ``(B * height * width, F, D)``: each latent position's F motion
    tokens, the condition grid nearest-resized to ``height x width`` (in fp32, with the
    release's scale factors rather than sizes: the same source cells)."""
    batch, frames, positions, dim = context_btsd.shape
    if (height, width) != (CONDITION_GRID, CONDITION_GRID):
        grid_ndgg = context_btsd.reshape(batch * frames, CONDITION_GRID, CONDITION_GRID, dim).permute(
            0, 3, 1, 2
        )
        scale = (height / CONDITION_GRID, width / CONDITION_GRID)
        resized = F.interpolate(grid_ndgg.float(), scale_factor=scale, mode="nearest").to(context_btsd.dtype)
        context_btsd = resized.reshape(batch, frames, dim, height * width).transpose(2, 3)
        positions = height * width
    return context_btsd.transpose(1, 2).reshape(batch * positions, frames, dim)


class MotionContextTransformer(TransformerSpatioTemporalModel):
    """diffusers' spatio-temporal transformer (same modules) reading a motion context
    ``(B, F, g*g, D)``: spatial cross-attention to the frame's tokens, temporal
    cross-attention to the position's tokens over time (``temporal_context``)."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        image_only_indicator: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> tuple[torch.Tensor]:
        batch_frames, channels, height, width = hidden_states.shape
        frames = image_only_indicator.shape[-1]
        batch = batch_frames // frames
        context_btsd = encoder_hidden_states
        time_context = temporal_context(context_btsd, height, width)
        space_context = context_btsd.reshape(batch_frames, context_btsd.shape[2], context_btsd.shape[3])

        residual = hidden_states
        hidden = self.norm(hidden_states).permute(0, 2, 3, 1).reshape(batch_frames, height * width, channels)
        hidden = self.proj_in(hidden)
        frame_index = torch.arange(frames, device=hidden.device).repeat(batch)
        frame_emb = self.time_pos_embed(self.time_proj(frame_index).to(hidden.dtype))[:, None, :]
        for block, temporal_block in zip(
            self.transformer_blocks, self.temporal_transformer_blocks, strict=True
        ):
            hidden = block(hidden, encoder_hidden_states=space_context)
            mixed = temporal_block(hidden + frame_emb, num_frames=frames, encoder_hidden_states=time_context)
            hidden = self.time_mixer(
                x_spatial=hidden, x_temporal=mixed, image_only_indicator=image_only_indicator
            )
        hidden = self.proj_out(hidden).reshape(batch_frames, height, width, -1).permute(0, 3, 1, 2)
        # diffusers' blocks call this with return_dict=False and take [0]
        return (hidden.contiguous() + residual,)


class MotionUNet(UNetSpatioTemporalConditionModel):
    """``UNetSpatioTemporalConditionModel`` whose context is the motion condition
    ``(B, F, g*g, D)`` (module docstring). Its config and weights are diffusers' (the
    release's ``unet/`` folder loads into it); each spatio-temporal transformer diffusers'
    blocks build becomes a ``MotionContextTransformer`` (a subclass with no state of its
    own: the blocks construct the stock class by direct reference)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for module in self.modules():
            if type(module) is TransformerSpatioTemporalModel:
                module.__class__ = MotionContextTransformer

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        added_time_ids: torch.Tensor,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        """``sample (B, F, C_in, h, w)``, ``timestep`` (scalar or (B,)), ``encoder_hidden_states
        (B, F, g*g, D)``, ``added_time_ids (B, 3)`` -> ``((B, F, C_out, h, w),)``."""
        batch, frames = sample.shape[:2]
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        time_embeds = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1).to(emb.dtype)
        emb = (emb + self.add_embedding(time_embeds)).repeat_interleave(frames, dim=0)

        hidden = self.conv_in(sample.flatten(0, 1))
        only_images = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)
        context = {"encoder_hidden_states": encoder_hidden_states}
        skips = (hidden,)
        for block in self.down_blocks:
            extra = context if getattr(block, "has_cross_attention", False) else {}
            hidden, res = block(hidden_states=hidden, temb=emb, image_only_indicator=only_images, **extra)
            skips += res
        hidden = self.mid_block(hidden_states=hidden, temb=emb, image_only_indicator=only_images, **context)
        for block in self.up_blocks:
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            extra = context if getattr(block, "has_cross_attention", False) else {}
            hidden = block(
                hidden_states=hidden,
                temb=emb,
                res_hidden_states_tuple=res,
                image_only_indicator=only_images,
                **extra,
            )
        hidden = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        return (hidden.reshape(batch, frames, *hidden.shape[1:]),)
