"""The VidTok v1.0 encoder and decoder, causal and non-causal (seed-systems §a.1).

Both are built from a ``VidTokConfig``; their ``state_dict`` keys are those of the
released checkpoints' ``encoder.*`` / ``decoder.*`` (``down.{i}.block.{j}``,
``down_temporal.{i}.downsample.mix_factor``, ``mid.attn_1.q.conv``, ...).

Frame rules (v1.0): the causal encoder prepends ``tf - 1`` copies of the first frame when
T is not a multiple of ``tf`` and the causal decoder drops its first ``tf - 1`` outputs, so
``T = 1 + k * tf`` frames round-trip; non-causal models take multiples of ``tf``. The
autoencoder checks these before calling in here.
"""

from __future__ import annotations

import torch
from torch import nn

from divot_llm.tokenizers.vidtok.config import VidTokConfig, resolved_levels
from divot_llm.tokenizers.vidtok.layers import (
    FrameAttention,
    NormOver,
    ResBlock3d,
    SpatialDownsample,
    SpatialResBlock,
    SpatialUpsample,
    TemporalDownsample,
    TemporalResBlock,
    TemporalUpsample,
    apply_norm,
    conv3d,
    make_norm,
    per_frame,
    spatio_temporal,
    swish,
)


def _middle(channels: int, config: VidTokConfig) -> nn.Module:
    """3D residual block, per-frame attention, 3D residual block."""
    mid = nn.Module()
    mid.block_1 = ResBlock3d(channels, config.norm_type, config.causal)
    mid.attn_1 = FrameAttention(channels, config.norm_type, config.causal)
    mid.block_2 = ResBlock3d(channels, config.norm_type, config.causal)
    return mid


def _run_middle(mid: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h)))


class VidTokEncoder(nn.Module):
    """``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, C_out, T', H / s, W / s)``, with C_out =
    2 * z_channels for KL (mean and log-variance) and z_channels for FSQ."""

    def __init__(self, config: VidTokConfig) -> None:
        super().__init__()
        self.causal = config.causal
        self.time_factor = config.time_downsample_factor
        levels = resolved_levels(config)
        self.spatial_levels, self.temporal_levels = levels.spatial_ds, levels.tempo_ds
        widths = [config.ch * mult for mult in config.ch_mult]
        self.conv_in = conv3d(3, config.ch, 3, config.causal)
        self.down = nn.ModuleList()
        self.down_temporal = nn.ModuleList()
        block_in = config.ch
        for level, width in enumerate(widths):
            spatial, temporal = nn.Module(), nn.Module()
            spatial.block = nn.ModuleList()
            temporal.block = nn.ModuleList()
            for _ in range(config.num_res_blocks):
                spatial.block.append(SpatialResBlock(block_in, width, config.norm_type))
                temporal.block.append(TemporalResBlock(width, config.norm_type, config.causal))
                block_in = width
            if level in self.spatial_levels:
                spatial.downsample = SpatialDownsample(width)
                if level in self.temporal_levels:
                    temporal.downsample = TemporalDownsample(width, config.causal)
            self.down.append(spatial)
            self.down_temporal.append(temporal)
        self.mid = _middle(block_in, config)
        self.norm_out = make_norm(block_in, config.norm_type)
        out_channels = 2 * config.z_channels if config.regularizer == "kl" else config.z_channels
        self.conv_out = conv3d(block_in, out_channels, 3, config.causal)

    def forward(self, x_bcthw: torch.Tensor) -> torch.Tensor:
        if self.causal and x_bcthw.shape[2] % self.time_factor:
            # v1.0: repeat the first frame so that the first latent sees it alone
            first = x_bcthw[:, :, :1].expand(-1, -1, self.time_factor - 1, -1, -1)
            x_bcthw = torch.cat([first, x_bcthw], dim=2)
        h = self.conv_in(x_bcthw)
        for level, (spatial, temporal) in enumerate(zip(self.down, self.down_temporal, strict=True)):
            for spatial_block, temporal_block in zip(spatial.block, temporal.block, strict=True):
                h = spatio_temporal(spatial_block, temporal_block, h)
            if level in self.spatial_levels:
                h = per_frame(spatial.downsample, h)
                if level in self.temporal_levels:
                    h = temporal.downsample(h)
        h = _run_middle(self.mid, h)
        over = NormOver.frame if self.causal else NormOver.clip
        return self.conv_out(swish(apply_norm(self.norm_out, h, over)))


class VidTokDecoder(nn.Module):
    """``(B, z_channels, T', h, w)`` -> ``(B, 3, T, h * s, w * s)`` (unbounded; the training
    loss and the metrics clamp)."""

    def __init__(self, config: VidTokConfig) -> None:
        super().__init__()
        self.causal = config.causal
        self.time_factor = config.time_downsample_factor
        levels = resolved_levels(config)
        self.spatial_levels, self.temporal_levels = levels.spatial_us, levels.tempo_us
        widths = [config.ch * mult for mult in config.ch_mult]
        block_in = widths[-1]
        self.conv_in = conv3d(config.z_channels, block_in, 3, config.causal)
        self.mid = _middle(block_in, config)
        up: list[nn.Module] = []
        up_temporal: list[nn.Module] = []
        for level in reversed(range(len(widths))):
            spatial, temporal = nn.Module(), nn.Module()
            spatial.block = nn.ModuleList()
            temporal.block = nn.ModuleList()
            for _ in range(config.num_res_blocks + 1):
                spatial.block.append(SpatialResBlock(block_in, widths[level], config.norm_type))
                temporal.block.append(TemporalResBlock(widths[level], config.norm_type, config.causal))
                block_in = widths[level]
            if level in self.spatial_levels:
                spatial.upsample = SpatialUpsample(block_in)
            # built wherever listed (the checkpoints hold it), used only with a spatial step
            if level in levels.tempo_us_built:
                temporal.upsample = TemporalUpsample(block_in, config.causal)
            up.insert(0, spatial)
            up_temporal.insert(0, temporal)
        self.up = nn.ModuleList(up)
        self.up_temporal = nn.ModuleList(up_temporal)
        self.norm_out = make_norm(block_in, config.norm_type)
        self.conv_out = conv3d(block_in, 3, 3, config.causal)

    @property
    def last_layer(self) -> nn.Parameter:
        """The final convolution's weight (the GAN loss's adaptive weight reads its grads)."""
        return self.conv_out.conv.weight if self.causal else self.conv_out.weight

    def forward(self, z_bcthw: torch.Tensor) -> torch.Tensor:
        h = _run_middle(self.mid, self.conv_in(z_bcthw))
        for level in reversed(range(len(self.up))):
            spatial, temporal = self.up[level], self.up_temporal[level]
            for spatial_block, temporal_block in zip(spatial.block, temporal.block, strict=True):
                h = spatio_temporal(spatial_block, temporal_block, h)
            if level in self.spatial_levels:
                h = per_frame(spatial.upsample, h)
                if level in self.temporal_levels:
                    h = temporal.upsample(h)
        over = NormOver.frame if self.causal else NormOver.clip
        x_bcthw = self.conv_out(swish(apply_norm(self.norm_out, h, over)))
        if self.causal:
            # v1.0: the first tf - 1 outputs belong to the encoder's repeated first frame
            x_bcthw = x_bcthw[:, :, self.time_factor - 1 :]
        return x_bcthw
