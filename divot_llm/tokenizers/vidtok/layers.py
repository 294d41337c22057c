"""Building blocks of the VidTok v1.0 encoder and decoder (seed-systems §a.1).

Every module keeps the attribute names of the released checkpoints, so that their
``state_dict`` loads strictly: a causal convolution wraps its ``nn.Conv3d``/``nn.Conv1d``
as ``.conv``, a layer norm wraps its ``nn.LayerNorm`` as ``.norm``, resampling modules
hold ``conv`` and ``mix_factor``. Tensors are ``(B, C, T, H, W)`` unless a name says
otherwise.

Where a norm sees which positions matters only for group norm (layer norm normalises
each position over its channels): the released models use layer norm; group norm is
kept with the grouping of the original (per frame in causal models, per clip or per
pixel track in non-causal ones) so that its configs build the same function.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn


class NormOver(enum.Enum):
    """The positions one group-norm statistic spans."""

    frame = "frame"  # each frame of each clip: (B*T, C, H, W)
    position = "position"  # each pixel of each frame alone: (B*T*H*W, C, 1)
    track = "track"  # each pixel's sequence over time: (B*H*W, C, T)
    clip = "clip"  # the whole clip: (B, C, T, H, W)


def swish(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), computed as VidTok does. ``F.silu`` differs in the last bit, and a deep
    stack of layer norms grows such differences: ~1e-5 at the output of a tiny model,
    where this form matches VidTok bit for bit on the same machine (parity fixtures)."""
    return x * torch.sigmoid(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis (dim 1) of a channels-first tensor of any rank."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


def make_norm(channels: int, norm_type: str) -> nn.Module:
    if norm_type == "layernorm":
        return ChannelLayerNorm(channels)
    if norm_type == "groupnorm":
        return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)
    raise ValueError(f"norm_type must be 'layernorm' or 'groupnorm', got {norm_type!r}")


def per_frame(fn, x_bcthw: torch.Tensor) -> torch.Tensor:
    """Apply a 2D (``(N, C, H, W)``) function to every frame of a clip."""
    batch, frames = x_bcthw.shape[0], x_bcthw.shape[2]
    frames_ncHW = x_bcthw.transpose(1, 2).flatten(0, 1)
    out_ncHW = fn(frames_ncHW)
    return out_ncHW.unflatten(0, (batch, frames)).transpose(1, 2)


def per_track(fn, x_bcthw: torch.Tensor) -> torch.Tensor:
    """Apply a 1D (``(N, C, T)``) function to every pixel's sequence over time."""
    batch, _, _, height, width = x_bcthw.shape
    tracks_nct = x_bcthw.permute(0, 3, 4, 1, 2).flatten(0, 2)
    out_nct = fn(tracks_nct)
    return out_nct.unflatten(0, (batch, height, width)).permute(0, 3, 4, 1, 2)


def apply_norm(norm: nn.Module, x_bcthw: torch.Tensor, over: NormOver) -> torch.Tensor:
    if isinstance(norm, ChannelLayerNorm) or over is NormOver.clip:
        return norm(x_bcthw)
    if over is NormOver.position:
        channels_last = x_bcthw.movedim(1, -1)
        out_nc1 = norm(channels_last.reshape(-1, x_bcthw.shape[1], 1))
        return out_nc1.reshape(channels_last.shape).movedim(-1, 1)
    return (per_frame if over is NormOver.frame else per_track)(norm, x_bcthw)


class CausalConv3d(nn.Module):
    """3D convolution that sees no later frame: time is zero-padded at the front only,
    space symmetrically (odd spatial kernels)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int, stride: tuple[int, int, int] = (1, 1, 1)
    ) -> None:
        super().__init__()
        time_pad = kernel_size - stride[0]
        space_pad = (kernel_size - 1) // 2
        # F.pad order: W left/right, H top/bottom, T front/back
        self.padding = (space_pad, space_pad, space_pad, space_pad, time_pad, 0)
        self.conv = nn.Conv3d(in_ch, out_ch, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.padding))


class CausalConv1d(nn.Module):
    """1D convolution over time, zero-padded at the front only (stride 1)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int) -> None:
        super().__init__()
        self.time_pad = kernel_size - 1
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size)

    def forward(self, x_nct: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_nct, (self.time_pad, 0)))


def conv3d(in_ch: int, out_ch: int, kernel_size: int, causal: bool) -> nn.Module:
    """Stride-1 3D convolution keeping T, H, W: causal in time or centred."""
    if causal:
        return CausalConv3d(in_ch, out_ch, kernel_size)
    return nn.Conv3d(in_ch, out_ch, kernel_size, padding=kernel_size // 2)


class SpatialResBlock(nn.Module):
    """Pre-norm residual block of two 3x3 convolutions on single frames ``(N, C, H, W)``."""

    def __init__(self, in_ch: int, out_ch: int, norm_type: str) -> None:
        super().__init__()
        self.norm1 = make_norm(in_ch, norm_type)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = make_norm(out_ch, norm_type)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x_nchw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x_nchw)))
        h = self.conv2(swish(self.norm2(h)))
        skip = self.nin_shortcut(x_nchw) if hasattr(self, "nin_shortcut") else x_nchw
        return skip + h


class TemporalResBlock(nn.Module):
    """Residual block of two kernel-3 convolutions along time at each pixel, channels
    kept. Its second convolution starts at zero, so that a new block is the identity."""

    def __init__(self, channels: int, norm_type: str, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.norm1 = make_norm(channels, norm_type)
        self.conv1 = (
            CausalConv1d(channels, channels, 3) if causal else nn.Conv1d(channels, channels, 3, padding=1)
        )
        self.norm2 = make_norm(channels, norm_type)
        self.conv2 = (
            CausalConv1d(channels, channels, 3) if causal else nn.Conv1d(channels, channels, 3, padding=1)
        )
        last = self.conv2.conv if causal else self.conv2
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        # VidTok's causal block regroups its (B*H*W, C, T) input per frame with the whole
        # first dimension as the batch, so each position is normalised alone
        over = NormOver.position if self.causal else NormOver.track
        h = per_track(self.conv1, swish(apply_norm(self.norm1, x_bcthw, over)))
        h = per_track(self.conv2, swish(apply_norm(self.norm2, h, over)))
        return x_bcthw + h


def spatio_temporal(
    spatial: SpatialResBlock, temporal: TemporalResBlock, x_bcthw: torch.Tensor
) -> torch.Tensor:
    """One "2D conv spatial + 1D temporal" step: ``spatial`` on every frame, then
    ``temporal`` on every pixel track (the checkpoints keep the halves in two lists)."""
    return temporal(per_frame(spatial, x_bcthw))


class ResBlock3d(nn.Module):
    """Residual block of two full 3x3x3 convolutions (the middle of the networks), causal
    in time or centred; channels kept."""

    def __init__(self, channels: int, norm_type: str, causal: bool) -> None:
        super().__init__()
        self.over = NormOver.frame if causal else NormOver.clip
        self.norm1 = make_norm(channels, norm_type)
        self.conv1 = conv3d(channels, channels, 3, causal)
        self.norm2 = make_norm(channels, norm_type)
        self.conv2 = conv3d(channels, channels, 3, causal)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(apply_norm(self.norm1, x_bcthw, self.over)))
        h = self.conv2(swish(apply_norm(self.norm2, h, self.over)))
        return x_bcthw + h


class FrameAttention(nn.Module):
    """Single-head self-attention among the pixels of each frame (no attention across
    time), with 1x1x1 convolutions as projections and a residual connection."""

    def __init__(self, channels: int, norm_type: str, causal: bool) -> None:
        super().__init__()
        self.over = NormOver.frame if causal else NormOver.clip
        self.norm = make_norm(channels, norm_type)
        self.q = conv3d(channels, channels, 1, causal)
        self.k = conv3d(channels, channels, 1, causal)
        self.v = conv3d(channels, channels, 1, causal)
        self.proj_out = conv3d(channels, channels, 1, causal)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        _, _, _, height, width = x_bcthw.shape
        h = apply_norm(self.norm, x_bcthw, self.over)
        q_btpc, k_btpc, v_btpc = (
            proj(h).flatten(3).permute(0, 2, 3, 1).contiguous() for proj in (self.q, self.k, self.v)
        )
        out_btpc = F.scaled_dot_product_attention(q_btpc, k_btpc, v_btpc)
        out_bcthw = out_btpc.permute(0, 3, 1, 2).unflatten(3, (height, width))
        return x_bcthw + self.proj_out(out_bcthw)


class SpatialDownsample(nn.Module):
    """Halve H and W of ``(N, C, H, W)``: stride-2 3x3 convolution after padding one
    zero row and column at the bottom/right."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x_nchw: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x_nchw, (0, 1, 0, 1)))


class SpatialUpsample(nn.Module):
    """Double H and W of ``(N, C, H, W)``: nearest neighbour, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x_nchw: torch.Tensor) -> torch.Tensor:
        # nearest in fp32: interpolate lacks bf16 kernels on some backends
        up = F.interpolate(x_nchw.float(), scale_factor=2.0, mode="nearest").to(x_nchw.dtype)
        return self.conv(up)


class TemporalDownsample(nn.Module):
    """Halve T: a learned blend sigmoid(mix_factor) * average-of-3 + (1 - ...) * stride-2
    convolution. Causal models pad one zero frame in front (the convolution pads its own),
    non-causal ones one at the end (for both branches)."""

    def __init__(self, channels: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        if causal:
            self.conv = CausalConv3d(channels, channels, 3, stride=(2, 1, 1))
        else:
            self.conv = nn.Conv3d(channels, channels, 3, stride=(2, 1, 1), padding=(0, 1, 1))
        self.mix_factor = nn.Parameter(torch.tensor([2.0]))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        if self.causal:
            pooled = F.avg_pool3d(F.pad(x_bcthw, (0, 0, 0, 0, 1, 0)), (3, 1, 1), stride=(2, 1, 1))
            conv = self.conv(x_bcthw)
        else:
            padded = F.pad(x_bcthw, (0, 0, 0, 0, 0, 1))
            pooled = F.avg_pool3d(padded, (3, 1, 1), stride=(2, 1, 1))
            conv = self.conv(padded)
        return alpha * pooled + (1 - alpha) * conv


class TemporalUpsample(nn.Module):
    """Double T: nearest-neighbour repeat of each frame blended with a 3x3x3 convolution
    of it (causal or centred) by sigmoid(mix_factor)."""

    def __init__(self, channels: int, causal: bool) -> None:
        super().__init__()
        self.conv = conv3d(channels, channels, 3, causal)
        self.mix_factor = nn.Parameter(torch.tensor([2.0]))

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        alpha = torch.sigmoid(self.mix_factor)
        repeated = x_bcthw.repeat_interleave(2, dim=2)
        return alpha * repeated + (1 - alpha) * self.conv(repeated)
