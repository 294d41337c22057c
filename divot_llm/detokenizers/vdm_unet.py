"""video-diffusion-pytorch's ``Unet3D`` (Ho et al., "Video Diffusion Models"), our own code.

Keyword arguments are the seed package's (0.7.0) and module names match its state dicts
(blocks in ``vdm_layers``); ``GaussianDiffusion`` in ``vdm`` wraps it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from divot_llm.detokenizers.vdm_layers import (
    ROTARY_MAX_DIM,
    SPATIAL_DIM_HEAD,
    Attention,
    OverPixels,
    RelativePositionBias,
    ResnetBlock,
    RotaryEmbedding,
    SpatialLinearAttention,
    TokenCrossAttention,
    downsample,
    norm_residual,
    temporal_attention,
    upsample,
)

BERT_MODEL_DIM = 768  # BERT-base's width: cond_dim when use_bert_text_cond is set


class SinusoidalPosEmb(nn.Module):
    """``[sin(t f_i), cos(t f_i)]``, ``f_i = 10000^(-i / (dim/2 - 1))``: ``(B,)`` -> ``(B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t_b: torch.Tensor) -> torch.Tensor:
        # diffusers' get_timestep_embedding(flip_sin_to_cos=False, downscale_freq_shift=1) is
        # the same formula but rounds the frequencies differently (parity needs the seed's)
        half = self.dim // 2
        freqs_h = torch.exp(torch.arange(half, device=t_b.device) * -(math.log(10000) / (half - 1)))
        angles_bh = t_b[:, None] * freqs_h[None, :]
        return torch.cat((angles_bh.sin(), angles_bh.cos()), dim=-1)


def bernoulli_mask(batch: int, prob: float, device: torch.device) -> torch.Tensor:
    """``(B,)`` bool, True with probability ``prob``. 0 and 1 draw no random numbers, so a
    deterministic call leaves the RNG stream as the seed's does."""
    if prob == 1:
        return torch.ones(batch, device=device, dtype=torch.bool)
    if prob == 0:
        return torch.zeros(batch, device=device, dtype=torch.bool)
    return torch.zeros(batch, device=device).uniform_(0, 1) < prob


class Unet3D(nn.Module):
    """Space-time factored 3D UNet: (1, k, k) convolutions, per-frame spatial attention and
    per-pixel temporal attention (rotary + relative position bias), never pooling frames.

    The time embedding (sinusoidal -> MLP to ``4 * dim``) is concatenated with the condition
    vector ``cond`` ``(B, cond_dim)``; ``null_cond_emb`` replaces the condition of dropped
    samples (classifier-free guidance). H and W must be divisible by ``2 ** (len(dim_mults) - 1)``.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        out_dim: int | None = None,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        channels: int = 3,
        attn_heads: int = 8,
        attn_dim_head: int = 32,
        use_bert_text_cond: bool = False,
        init_dim: int | None = None,
        init_kernel_size: int = 7,
        use_sparse_linear_attn: bool = True,
        block_type: str = "resnet",
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        if block_type != "resnet":
            raise ValueError(
                f"block_type {block_type!r}: only 'resnet' exists (as in video-diffusion-pytorch 0.7.0)"
            )
        if init_kernel_size % 2 != 1:
            raise ValueError(f"init_kernel_size must be odd, got {init_kernel_size}")
        self.channels = channels
        self.levels = len(dim_mults)
        rotary = RotaryEmbedding(
            min(ROTARY_MAX_DIM, attn_dim_head)
        )  # one module, shared by every temporal attention

        def time_attn(width: int) -> nn.Module:
            return temporal_attention(width, attn_heads, attn_dim_head, rotary)

        self.time_rel_pos_bias = RelativePositionBias(heads=attn_heads)

        init_dim = init_dim or dim
        pad = init_kernel_size // 2
        self.init_conv = nn.Conv3d(
            channels, init_dim, (1, init_kernel_size, init_kernel_size), padding=(0, pad, pad)
        )
        self.init_temporal_attn = time_attn(init_dim)

        time_dim = 4 * dim
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(dim), nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim)
        )
        if use_bert_text_cond:
            cond_dim = BERT_MODEL_DIM
        self.has_cond = cond_dim is not None
        self.null_cond_emb = nn.Parameter(torch.randn(1, cond_dim)) if self.has_cond else None
        emb_dim = time_dim + (cond_dim or 0)

        widths = [init_dim, *(dim * m for m in dim_mults)]
        pairs = list(zip(widths[:-1], widths[1:], strict=True))

        def spatial_attn(width: int) -> nn.Module:
            if not use_sparse_linear_attn:
                return nn.Identity()
            return norm_residual(width, SpatialLinearAttention(width, heads=attn_heads))

        self.downs = nn.ModuleList()
        for level, (w_in, w_out) in enumerate(pairs):
            last = level == len(pairs) - 1
            self.downs.append(
                nn.ModuleList(
                    [
                        ResnetBlock(w_in, w_out, emb_dim),
                        ResnetBlock(w_out, w_out, emb_dim),
                        spatial_attn(w_out),
                        time_attn(w_out),
                        nn.Identity() if last else downsample(w_out),
                    ]
                )
            )
        mid = widths[-1]
        self.mid_block1 = ResnetBlock(mid, mid, emb_dim)
        self.mid_spatial_attn = norm_residual(mid, OverPixels(Attention(mid, attn_heads, SPATIAL_DIM_HEAD)))
        self.mid_temporal_attn = time_attn(mid)
        self.mid_block2 = ResnetBlock(mid, mid, emb_dim)

        # Our addition (None: the seed's model and state dict): after every spatial attention,
        # cross-attention to memory tokens ``context`` (B, N, context_dim); dropped samples
        # (null_cond_prob) attend to the learned ``null_context`` token instead.
        self.has_context = context_dim is not None
        if self.has_context:
            if not self.has_cond:
                raise ValueError("context_dim needs cond_dim: the dropped samples' null input is shared")

            def cross(width: int) -> TokenCrossAttention:
                return TokenCrossAttention(width, context_dim, attn_heads, attn_dim_head)

            self.null_context = nn.Parameter(torch.randn(1, 1, context_dim))
            self.down_cross_attn = nn.ModuleList(cross(w_out) for _, w_out in pairs)
            self.mid_cross_attn = cross(mid)
            self.up_cross_attn = nn.ModuleList(cross(w_in) for w_in, _ in reversed(pairs))

        self.ups = nn.ModuleList()
        for level, (w_in, w_out) in enumerate(reversed(pairs)):
            last = level == len(pairs) - 1
            self.ups.append(
                nn.ModuleList(
                    [
                        ResnetBlock(2 * w_out, w_in, emb_dim),
                        ResnetBlock(w_in, w_in, emb_dim),
                        spatial_attn(w_in),
                        time_attn(w_in),
                        nn.Identity() if last else upsample(w_in),
                    ]
                )
            )
        # the last up level ends at init_dim and is joined by the init features (the seed
        # writes dim * 2 here, which only works when init_dim == dim)
        self.final_conv = nn.Sequential(
            ResnetBlock(2 * init_dim, dim), nn.Conv3d(dim, out_dim or channels, 1)
        )

    def forward(
        self,
        x: torch.Tensor,
        time: torch.Tensor,
        cond: torch.Tensor | None = None,
        null_cond_prob: float = 0.0,
        focus_present_mask: torch.Tensor | None = None,
        prob_focus_present: float = 0.0,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Noise prediction for ``x`` ``(B, C, F, H, W)`` at integer steps ``time`` ``(B,)``;
        ``context`` ``(B, N, context_dim)`` when built with ``context_dim``."""
        if self.has_cond and cond is None:
            raise ValueError("this Unet3D has cond_dim set: pass cond (B, cond_dim)")
        if self.has_context and context is None:
            raise ValueError("this Unet3D has context_dim set: pass context (B, N, context_dim)")
        if isinstance(cond, (list, tuple)):
            raise TypeError("cond must be a tensor: embed text with the configured text encoder first")
        stride = 2 ** (self.levels - 1)
        if x.ndim != 5 or x.shape[-1] % stride or x.shape[-2] % stride:
            raise ValueError(
                f"expected (B, C, F, H, W) with H and W divisible by {stride}, got {tuple(x.shape)}"
            )
        batch, device = x.shape[0], x.device
        if focus_present_mask is None:
            focus_present_mask = bernoulli_mask(batch, prob_focus_present, device)
        bias_hff = self.time_rel_pos_bias(x.shape[2], device)

        x = self.init_conv(x)
        # the seed's first temporal attention never sees the focus mask: kept for parity
        x = self.init_temporal_attn(x, pos_bias=bias_hff)
        init_features = x.clone()

        emb_be = self.time_mlp(time)
        if self.has_cond:
            dropped_b = bernoulli_mask(batch, null_cond_prob, device)
            cond = torch.where(dropped_b[:, None], self.null_cond_emb, cond)
            emb_be = torch.cat((emb_be, cond), dim=-1)
        if self.has_context:
            context = torch.where(dropped_b[:, None, None], self.null_context.to(context.dtype), context)
        down_cross = self.down_cross_attn if self.has_context else [None] * len(self.downs)
        up_cross = self.up_cross_attn if self.has_context else [None] * len(self.ups)

        skips = []
        for (block1, block2, spatial, temporal, down), cross in zip(self.downs, down_cross, strict=True):
            x = spatial(block2(block1(x, emb_be), emb_be))
            if cross is not None:
                x = cross(x, context)
            x = temporal(x, pos_bias=bias_hff, focus_present_mask=focus_present_mask)
            skips.append(x)
            x = down(x)

        x = self.mid_spatial_attn(self.mid_block1(x, emb_be))
        if self.has_context:
            x = self.mid_cross_attn(x, context)
        x = self.mid_temporal_attn(x, pos_bias=bias_hff, focus_present_mask=focus_present_mask)
        x = self.mid_block2(x, emb_be)

        for (block1, block2, spatial, temporal, up), cross in zip(self.ups, up_cross, strict=True):
            x = torch.cat((x, skips.pop()), dim=1)
            x = spatial(block2(block1(x, emb_be), emb_be))
            if cross is not None:
                x = cross(x, context)
            x = temporal(x, pos_bias=bias_hff, focus_present_mask=focus_present_mask)
            x = up(x)

        return self.final_conv(torch.cat((x, init_features), dim=1))

    def forward_with_cond_scale(self, *args, cond_scale: float = 2.0, **kwargs) -> torch.Tensor:
        """Classifier-free guidance: ``uncond + (cond - uncond) * cond_scale`` (two passes)."""
        cond_out = self.forward(*args, null_cond_prob=0.0, **kwargs)
        if cond_scale == 1 or not self.has_cond:
            return cond_out
        uncond_out = self.forward(*args, null_cond_prob=1.0, **kwargs)
        return uncond_out + (cond_out - uncond_out) * cond_scale
