"""Blocks of the DynamiCrafter 3D UNet, named as the reference's ``lvdm`` modules.

Module and parameter names (``in_layers``, ``emb_layers``, ``to_k_ip``, ``alpha``, even the
reference's ``temopral_conv`` typo) are those of the released
``Divot_detokenizer_stage{1,2}.bin``, so it loads without renaming (reference §4.1, §9.2).

Layout convention: frames are folded into the batch, ``(B*T, C, H, W)``, everywhere except
inside temporal layers, which unfold them to ``(B, C, T, H, W)``. Their GroupNorms then take
statistics over all frames of a clip, as the reference does. Attention runs through
``scaled_dot_product_attention``; the feed-forward is diffusers' GEGLU ``FeedForward``, whose
names (``net.0.proj``, ``net.2``) match lvdm's.

lvdm hard-codes 32 GroupNorm groups, so every UNet width must be a multiple of 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from einops import rearrange
from torch import nn

from divot_llm.tokenizers.divot_layers import multi_head_attention

NORM_GROUPS = 32


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter: output layers start as no-ops, so a fresh block is an identity
    on its residual path (the reference initialisation)."""
    for param in module.parameters():
        nn.init.zeros_(param)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 (lvdm ``normalization``): bf16 statistics over large
    feature maps are too coarse."""

    def __init__(self, channels: int) -> None:
        super().__init__(NORM_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


# ------------------------------------------------------------------------- attention


class CrossAttention(nn.Module):
    """Multi-head attention with lvdm's names; optionally DynamiCrafter's dual cross-attention.

    With ``text_context_len`` set, the context is split: its first ``text_context_len``
    tokens go through ``to_k``/``to_v``, the rest through ``to_k_ip``/``to_v_ip``, and the
    two results are summed with the image part scaled by ``tanh(alpha) + 1`` (``alpha``
    starts at 0, so the scale starts at 1). Divot feeds its 125 resampled tokens to both
    paths: 77 "text" + 48 "image" tokens.

    Args:
        query_dim: width of the queries (and of the output).
        heads: attention heads.
        dim_head: width per head.
        context_dim: width of the keys/values source; None for self-attention.
        text_context_len: split point of the dual cross-attention; None for plain attention.
    """

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        text_context_len: int | None = None,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = context_dim or query_dim
        self.heads = heads
        self.text_context_len = text_context_len
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))  # key ``to_out.0`` (dropout p=0 dropped)
        if text_context_len is not None:
            self.to_k_ip = nn.Linear(context_dim, inner, bias=False)
            self.to_v_ip = nn.Linear(context_dim, inner, bias=False)
            # Held 1-d because DeepSpeed's start-up broadcast cannot take 0-dim parameters;
            # state dicts carry it 0-dim, as the release file does.
            self.alpha = nn.Parameter(torch.zeros(1))
            self.register_state_dict_post_hook(_alpha_to_scalar)
            self.register_load_state_dict_pre_hook(_alpha_from_scalar)

    def forward(self, x_bld: torch.Tensor, context_bsc: torch.Tensor | None = None) -> torch.Tensor:
        q_bli = self.to_q(x_bld)
        if context_bsc is None:  # self-attention
            context_bsc = x_bld
        elif self.text_context_len is not None:
            text_bsc, image_bsc = (
                context_bsc[:, : self.text_context_len],
                context_bsc[:, self.text_context_len :],
            )
            out_bli = multi_head_attention(q_bli, self.to_k(text_bsc), self.to_v(text_bsc), self.heads)
            out_ip_bli = multi_head_attention(
                q_bli, self.to_k_ip(image_bsc), self.to_v_ip(image_bsc), self.heads
            )
            return self.to_out(out_bli + out_ip_bli * (torch.tanh(self.alpha) + 1))
        out_bli = multi_head_attention(q_bli, self.to_k(context_bsc), self.to_v(context_bsc), self.heads)
        return self.to_out(out_bli)


def _alpha_to_scalar(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    alpha = state_dict[prefix + "alpha"]
    if alpha.numel() == 1:  # under ZeRO-3 a partitioned parameter is an empty placeholder here
        state_dict[prefix + "alpha"] = alpha.reshape(())


def _alpha_from_scalar(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
    if prefix + "alpha" in state_dict:
        state_dict[prefix + "alpha"] = state_dict[prefix + "alpha"].reshape(1)


class TransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention (self-attention again without context) and
    GEGLU feed-forward (lvdm ``BasicTransformerBlock``)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        text_context_len: int | None = None,
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.attn2 = CrossAttention(
            dim, heads, dim_head, context_dim=context_dim, text_context_len=text_context_len
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x_bld: torch.Tensor, context_bsc: torch.Tensor | None = None) -> torch.Tensor:
        x_bld = self.attn1(self.norm1(x_bld)) + x_bld
        x_bld = self.attn2(self.norm2(x_bld), context_bsc) + x_bld
        return self.ff(self.norm3(x_bld)) + x_bld


class SpatialTransformer(nn.Module):
    """Per-frame attention over the H*W positions, cross-attending to the conditioning.

    ``(B*T, C, H, W)`` + context ``(B*T, S, context_dim)`` -> ``(B*T, C, H, W)``; residual,
    with a zero-initialised output projection.
    """

    def __init__(
        self,
        channels: int,
        heads: int,
        dim_head: int,
        depth: int,
        context_dim: int,
        text_context_len: int | None,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(
                inner, heads, dim_head, context_dim=context_dim, text_context_len=text_context_len
            )
            for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Linear(inner, channels))

    def forward(self, x_nchw: torch.Tensor, context_nsc: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x_nchw.shape
        h_nld = self.proj_in(rearrange(self.norm(x_nchw), "n c h w -> n (h w) c"))
        for block in self.transformer_blocks:
            h_nld = block(h_nld, context_nsc)
        h_nchw = rearrange(self.proj_out(h_nld), "n (h w) c -> n c h w", h=height, w=width)
        return h_nchw + x_nchw


class TemporalTransformer(nn.Module):
    """Attention across the T frames of each spatial position (self-attention only: both
    attention layers of each block attend over frames, as the reference's ``only_self_att``).

    ``(B, C, T, H, W)`` -> same shape; residual, zero-initialised output projection.

    Args:
        channels: input width.
        heads: attention heads.
        dim_head: width per head.
        depth: transformer blocks.
        use_linear: ``nn.Linear`` projections (the UNet's temporal layers) or 1x1
            ``nn.Conv1d`` ones with weights ``(inner, C, 1)`` (the ``init_attn`` layer, which
            the reference builds without ``use_linear``).
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, use_linear: bool = True) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = nn.GroupNorm(NORM_GROUPS, channels, eps=1e-6)
        if use_linear:
            self.proj_in: nn.Module = nn.Linear(channels, inner)
            self.proj_out: nn.Module = zero_module(nn.Linear(inner, channels))
        else:
            self.proj_in = nn.Conv1d(channels, inner, kernel_size=1)
            self.proj_out = zero_module(nn.Conv1d(inner, channels, kernel_size=1))
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, dim_head) for _ in range(depth)
        )

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        _, _, _, height, width = x_bcthw.shape
        h_ntc = rearrange(self.norm(x_bcthw), "b c t h w -> (b h w) t c")
        h_ntc = _position_wise(self.proj_in, h_ntc)
        for block in self.transformer_blocks:
            h_ntc = block(h_ntc)
        h_ntc = _position_wise(self.proj_out, h_ntc)
        return rearrange(h_ntc, "(b h w) t c -> b c t h w", h=height, w=width) + x_bcthw


def _position_wise(layer: nn.Module, x_ntc: torch.Tensor) -> torch.Tensor:
    """Apply a Linear or a 1x1 Conv1d to the last dim of ``(N, T, C)``."""
    if isinstance(layer, nn.Conv1d):
        return layer(x_ntc.transpose(1, 2)).transpose(1, 2)
    return layer(x_ntc)


# --------------------------------------------------------------------- convolutions


class TemporalConvBlock(nn.Module):
    """Four (3, 1, 1) convolutions along time, residual, last one zero-initialised
    (lvdm/ModelScope ``TemporalConvBlock``). ``(B, C, T, H, W)`` -> same shape."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()

        def conv(with_dropout: bool) -> nn.Sequential:
            layers = [nn.GroupNorm(NORM_GROUPS, channels), nn.SiLU()]
            if with_dropout:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))
            return nn.Sequential(*layers)

        self.conv1 = conv(with_dropout=False)
        self.conv2 = conv(with_dropout=True)
        self.conv3 = conv(with_dropout=True)
        self.conv4 = conv(with_dropout=True)
        zero_module(self.conv4[-1])

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        return x_bcthw + self.conv4(self.conv3(self.conv2(self.conv1(x_bcthw))))


class ResBlock(nn.Module):
    """Residual block conditioned on the (time + fps) embedding, then a temporal conv block.

    ``(B*T, C_in, H, W)`` + embedding ``(B*T, E)`` -> ``(B*T, C_out, H, W)``.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, kernel_size=1)
        )
        self.temopral_conv = TemporalConvBlock(out_channels, dropout)  # sic: the release key name

    def forward(self, x_nchw: torch.Tensor, emb_ne: torch.Tensor, frames: int) -> torch.Tensor:
        h_nchw = self.in_layers(x_nchw) + self.emb_layers(emb_ne).type(x_nchw.dtype)[:, :, None, None]
        h_nchw = self.skip_connection(x_nchw) + self.out_layers(h_nchw)
        h_bcthw = self.temopral_conv(rearrange(h_nchw, "(b t) c h w -> b c t h w", t=frames))
        return rearrange(h_bcthw, "b c t h w -> (b t) c h w")


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (per frame)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x_nchw: torch.Tensor) -> torch.Tensor:
        return self.op(x_nchw)


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution (per frame)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_nchw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x_nchw, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Runs its layers in order, giving each the inputs it takes (lvdm's container, so the
    keys stay ``input_blocks.{i}.{j}``): ResBlocks get the embedding, spatial transformers
    the context, temporal transformers the clip layout, anything else only ``x``."""

    def forward(self, x_nchw: torch.Tensor, emb_ne: torch.Tensor, context_nsc: torch.Tensor, frames: int):
        for layer in self:
            if isinstance(layer, ResBlock):
                x_nchw = layer(x_nchw, emb_ne, frames)
            elif isinstance(layer, SpatialTransformer):
                x_nchw = layer(x_nchw, context_nsc)
            elif isinstance(layer, TemporalTransformer):
                x_bcthw = layer(rearrange(x_nchw, "(b t) c h w -> b c t h w", t=frames))
                x_nchw = rearrange(x_bcthw, "b c t h w -> (b t) c h w")
            else:
                x_nchw = layer(x_nchw)
        return x_nchw
