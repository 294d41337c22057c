"""Blocks of video-diffusion-pytorch's ``Unet3D`` (Ho et al., "Video Diffusion Models").

Our own code. The attribute names and the wrapper nesting are dictated by the seed package's
state dicts, which load here strictly: a residual wrapper holds its branch in ``fn``, a
pre-norm wrapper holds ``norm`` (``gamma``) and ``fn``, and the axis-folding wrappers hold the
attention in ``fn`` again -- hence keys such as ``downs.0.3.fn.fn.fn.to_qkv.weight``.

Layout: ``(B, C, F, H, W)`` everywhere; spatial layers fold frames into the batch, temporal
layers fold pixels into the batch. Nothing here ever mixes frames except the temporal
attention, which is why a clip of any frame count runs through the same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

ROTARY_MAX_DIM = 32  # the seed rotates at most 32 features of each temporal-attention head
REL_POS_BUCKETS = 32
REL_POS_MAX_DISTANCE = 32
SPATIAL_DIM_HEAD = 32  # the seed's spatial attentions ignore attn_dim_head and keep 32


# ------------------------------------------------------------------ position encodings


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the frame axis, interleaved pairs ``(x0, x1), (x2, x3)``.

    ``freqs`` (``dim // 2`` inverse wavelengths) is a persistent buffer: the seed stores it in
    every temporal attention's state (one shared module, so one key per attention), and a
    strict load needs the keys. Only the first ``dim`` features of a head rotate.
    """

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("freqs", 1.0 / theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))

    def rotate(self, x_snd: torch.Tensor) -> torch.Tensor:
        """Rotate ``(..., N, d)`` by position along N (the second-last axis)."""
        positions_n = torch.arange(x_snd.shape[-2], device=x_snd.device, dtype=self.freqs.dtype)
        angles_nr = torch.repeat_interleave(positions_n[:, None] * self.freqs[None, :], 2, dim=-1)
        rot = angles_nr.shape[-1]
        x_rot, x_pass = x_snd[..., :rot], x_snd[..., rot:]
        pairs = x_rot.unflatten(-1, (-1, 2))
        # (x0, x1) -> (-x1, x0): the quarter turn each pair's sin term multiplies
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        rotated = x_rot * angles_nr.cos() + turned * angles_nr.sin()
        return torch.cat((rotated, x_pass), dim=-1).type(x_snd.dtype)


class RelativePositionBias(nn.Module):
    """T5-style learned bias per head over bucketed frame offsets: exact buckets for small
    offsets, log-spaced ones up to ``max_distance``, half the buckets for each direction."""

    def __init__(
        self, heads: int, num_buckets: int = REL_POS_BUCKETS, max_distance: int = REL_POS_MAX_DISTANCE
    ) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def buckets(self, frames: int, device: torch.device) -> torch.Tensor:
        pos_f = torch.arange(frames, device=device)
        offset_ff = pos_f[:, None] - pos_f[None, :]  # query index minus key index
        half = self.num_buckets // 2
        bucket_ff = (offset_ff < 0).long() * half
        dist_ff = offset_ff.abs()
        exact = half // 2
        # clamp before the log: distance 0 takes the exact branch, but log(0) would be -inf
        far = (
            exact
            + (
                torch.log(dist_ff.clamp(min=1).float() / exact)
                / math.log(self.max_distance / exact)
                * (half - exact)
            ).long()
        )
        far = far.clamp(max=half - 1)
        return bucket_ff + torch.where(dist_ff < exact, dist_ff, far)

    def forward(self, frames: int, device: torch.device) -> torch.Tensor:
        """``(heads, F, F)`` additive attention bias."""
        return self.relative_attention_bias(self.buckets(frames, device)).permute(2, 0, 1)


# ------------------------------------------------------------------ norms and wrappers


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, F, H, W)``, scale only (``gamma``)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # var and mean apart (not var_mean): the seed's rounding, which parity at 1e-5 needs
        var = torch.var(x, dim=1, unbiased=False, keepdim=True)
        mean = torch.mean(x, dim=1, keepdim=True)
        return (x - mean) / (var + self.eps).sqrt() * self.gamma


class ChannelRMSNorm(nn.Module):
    """L2-normalise the channel vector, times ``sqrt(C) * gamma`` (the seed's block norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class Residual(nn.Module):
    """``fn(x, ...) + x`` (this operand order: the sum takes the branch's memory layout, and
    the next convolution's rounding depends on it)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(x, **kwargs) + x


class PreNorm(nn.Module):
    """``fn(norm(x), ...)`` with a channel LayerNorm."""

    def __init__(self, dim: int, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        return self.fn(self.norm(x), **kwargs)


def norm_residual(dim: int, fn: nn.Module) -> Residual:
    """The seed's pre-norm residual around an attention (keys ``fn.norm``, ``fn.fn``)."""
    return Residual(PreNorm(dim, fn))


# ------------------------------------------------------------------ attention


class Attention(nn.Module):
    """Softmax attention over the second-last axis of ``(..., N, C)``, bias-free projections.

    ``rotary`` (temporal attention only) rotates queries and keys by frame index;
    ``pos_bias`` ``(heads, N, N)`` is added to the logits; ``focus_present_mask`` ``(B,)``
    restricts the chosen samples to attend only to themselves (image/video co-training).
    """

    def __init__(self, dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.rotary_emb = rotary
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        pos_bias: torch.Tensor | None = None,
        focus_present_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        if focus_present_mask is not None and bool(focus_present_mask.all()):
            # attending only to itself returns each position's own value: skip the logits
            return self.to_out(v)
        q, k, v = (rearrange(t, "... n (h d) -> ... h n d", h=self.heads) for t in (q, k, v))
        q = q * self.dim_head**-0.5
        if self.rotary_emb is not None:
            q, k = self.rotary_emb.rotate(q), self.rotary_emb.rotate(k)
        # explicit softmax rather than scaled_dot_product_attention: its fused CPU kernel rounds
        # differently, and late denoising steps amplify 1e-7 noise errors past the 1e-5 parity
        logits = torch.einsum("...id,...jd->...ij", q, k)
        if pos_bias is not None:
            logits = logits + pos_bias
        if focus_present_mask is not None and bool(focus_present_mask.any()):
            # samples in focus see only their own frame; logits are (B, HW, heads, N, N)
            n = logits.shape[-1]
            eye_nn = torch.eye(n, device=x.device, dtype=torch.bool)
            allowed = eye_nn | ~focus_present_mask.view(-1, 1, 1, 1, 1)
            logits = logits.masked_fill(~allowed, -torch.finfo(logits.dtype).max)
        logits = logits - logits.amax(dim=-1, keepdim=True).detach()
        out = torch.einsum("...ij,...jd->...id", logits.softmax(dim=-1), v)
        return self.to_out(rearrange(out, "... h n d -> ... n (h d)"))


class OverFrames(nn.Module):
    """Run ``fn`` along the frame axis of every pixel: ``(B, C, F, H, W)`` -> ``(B, HW, F, C)``."""

    def __init__(self, fn: Attention) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        b, c, f, h, w = x.shape
        out = self.fn(rearrange(x, "b c f h w -> b (h w) f c"), **kwargs)
        return rearrange(out, "b (h w) f c -> b c f h w", h=h, w=w)


class OverPixels(nn.Module):
    """Run ``fn`` across the pixels of every frame: ``(B, C, F, H, W)`` -> ``(B, F, HW, C)``."""

    def __init__(self, fn: Attention) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        out = self.fn(rearrange(x, "b c f h w -> b f (h w) c"))
        return rearrange(out, "b f (h w) c -> b c f h w", h=h, w=w)


def temporal_attention(dim: int, heads: int, dim_head: int, rotary: RotaryEmbedding) -> Residual:
    return norm_residual(dim, OverFrames(Attention(dim, heads, dim_head, rotary)))


class SpatialLinearAttention(nn.Module):
    """Per-frame linear attention (softmax over features for q, over pixels for k): cost
    linear in H*W, used at every resolution."""

    def __init__(self, dim: int, heads: int, dim_head: int = SPATIAL_DIM_HEAD) -> None:
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Conv2d(dim, 3 * heads * dim_head, 1, bias=False)
        self.to_out = nn.Conv2d(heads * dim_head, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        frames_bchw = rearrange(x, "b c f h w -> (b f) c h w")
        q, k, v = (
            rearrange(t, "b (g d) x y -> b g d (x y)", g=self.heads)
            for t in self.to_qkv(frames_bchw).chunk(3, dim=1)
        )
        q = q.softmax(dim=-2) * self.scale
        k = k.softmax(dim=-1)
        context_bgde = torch.einsum("bgdn,bgen->bgde", k, v)
        out = torch.einsum("bgde,bgdn->bgen", context_bgde, q)
        out = self.to_out(rearrange(out, "b g e (x y) -> b (g e) x y", x=h, y=w))
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)


# ------------------------------------------------------------------ convolutional blocks


class Block(nn.Module):
    """(1, 3, 3) conv -> RMSNorm -> optional scale/shift from the time embedding -> SiLU."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(dim, dim_out, (1, 3, 3), padding=(0, 1, 1))
        self.norm = ChannelRMSNorm(dim_out)
        self.act = nn.SiLU()

    def forward(
        self, x: torch.Tensor, scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        x = self.norm(self.proj(x))
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.act(x)


class ResnetBlock(nn.Module):
    """Two Blocks plus a 1x1x1 skip projection; the (time ++ cond) embedding modulates the
    first Block by scale and shift."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int | None = None) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_emb_dim, 2 * dim_out)) if time_emb_dim else None
        self.block1 = Block(dim, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = nn.Conv3d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb_be: torch.Tensor | None = None) -> torch.Tensor:
        scale_shift = None
        if self.mlp is not None:
            if emb_be is None:
                raise ValueError("this ResnetBlock is conditioned: pass the time embedding")
            scale_shift = self.mlp(emb_be)[:, :, None, None, None].chunk(2, dim=1)
        h = self.block2(self.block1(x, scale_shift))
        return h + self.res_conv(x)


def downsample(dim: int) -> nn.Conv3d:
    """Halve H and W, keep the frames."""
    return nn.Conv3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))


def upsample(dim: int) -> nn.ConvTranspose3d:
    """Double H and W, keep the frames."""
    return nn.ConvTranspose3d(dim, dim, (1, 4, 4), (1, 2, 2), (0, 1, 1))


class TokenCrossAttention(nn.Module):
    """Every position of a ``(B, C, F, H, W)`` clip attends to memory tokens ``(B, N, D_ctx)``
    (the seed's TODO: conditioning tokens as attention memory; not in its state dicts).

    Pre-norm residual; the output projection starts at zero, so a fresh block is the
    identity and the UNet starts as the pooled-vector model.
    """

    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.context_norm = nn.LayerNorm(context_dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)

    def forward(self, x: torch.Tensor, context_bnd: torch.Tensor) -> torch.Tensor:
        _, _, frames, height, _ = x.shape
        # one sequence per clip: the memory is the same for every frame
        x_blc = rearrange(x, "b c f h w -> b (f h w) c")
        q = self.to_q(self.norm(x_blc))
        k, v = self.to_kv(self.context_norm(context_bnd)).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out_blc = self.to_out(rearrange(out, "b h n d -> b n (h d)"))
        return x + rearrange(out_blc, "b (f h w) c -> b c f h w", f=frames, h=height)
