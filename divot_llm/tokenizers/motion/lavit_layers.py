"""The networks of Video-LaVIT's motion tokenizer (``lavit.py`` wraps them).

Module and parameter names are the released ``motion_tokenizer.bin``'s, so its state dict
loads strictly: ``blocks.{i}.{norm0, spatial_attention, norm1, temporal_attention, norm2,
mlp.fc1, mlp.fc2}``, ``pos_embed``, ``temp_pos``, ``in_proj``, ``norm``,
``down_sample_layers.{i}.conv`` / ``up_sample_layers.{i}.conv``. Tokens travel as
``(B, T, S, D)``: T frames of S = h * w positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.tokenizers.divot_layers import ViTMlp
from divot_llm.tokenizers.motion.lavit_config import LaVITMotionConfig

# Every layer norm of the release (blocks and the final ones) uses eps 1e-5: the
# builder hands the encoder's norm layer to its blocks.
NORM_EPS = 1e-5
INIT_STD = 0.02  # truncated-normal std of linear / conv weights and positional embeddings


def init_weights(module: nn.Module) -> None:
    """The release's initialisation of its encoder and decoder (the task layers keep
    PyTorch's default): truncated normal weights, zero biases, unit norms."""
    if isinstance(module, (nn.Linear, nn.Conv3d)):
        nn.init.trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class BiasedQVAttention(nn.Module):
    """Multi-head self-attention whose fused ``qkv`` projection has biases on q and v only
    (``q_bias``, ``v_bias``; k's bias is fixed at zero, as in BEiT)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x_bnd.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv_bn3hc = F.linear(x_bnd, self.qkv.weight, qkv_bias).view(batch, length, 3, self.num_heads, -1)
        q_bhnc, k_bhnc, v_bhnc = qkv_bn3hc.permute(2, 0, 3, 1, 4).unbind(0)
        out_bhnc = F.scaled_dot_product_attention(q_bhnc, k_bhnc, v_bhnc)  # scale 1 / sqrt(head dim)
        return self.proj(out_bhnc.transpose(1, 2).reshape(batch, length, dim))


class SpaceTimeBlock(nn.Module):
    """Factorized attention: each frame's positions attend to each other, then each
    position's frames, then the MLP (pre-norm residuals)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm0 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.spatial_attention = BiasedQVAttention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.temporal_attention = BiasedQVAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))  # fc1, GELU, fc2: the released keys

    def forward(self, x_btsd: torch.Tensor) -> torch.Tensor:
        batch, frames, positions, dim = x_btsd.shape
        x_nsd = x_btsd.reshape(batch * frames, positions, dim)
        x_nsd = x_nsd + self.spatial_attention(self.norm0(x_nsd))
        x_ntd = (
            x_nsd.view(batch, frames, positions, dim).transpose(1, 2).reshape(batch * positions, frames, dim)
        )
        x_ntd = x_ntd + self.temporal_attention(self.norm1(x_ntd))
        x_ntd = x_ntd + self.mlp(self.norm2(x_ntd))
        return x_ntd.view(batch, positions, frames, dim).transpose(1, 2)


def downsample_padding(stride_thw: list[int]) -> tuple[int, ...]:
    """``F.pad`` amounts (w, h, t order) of a 3x3x3 conv with ``stride_thw``: an axis of
    stride 1 is padded on both sides (size kept), one of stride 2 on the far side only
    (size halved, rounding down) -- the release's four layers follow this rule."""
    pad = []
    for stride in reversed(stride_thw):
        pad += [1, 1] if stride == 1 else [0, 1]
    return tuple(pad)


class Downsample(nn.Module):
    """A 3x3x3 conv with stride, on channels-last ``(B, T, H, W, D)``."""

    def __init__(self, dim: int, stride_thw: list[int]) -> None:
        super().__init__()
        self.pad = downsample_padding(stride_thw)
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, stride=tuple(stride_thw))

    def forward(self, x_bthwd: torch.Tensor) -> torch.Tensor:
        x_bdthw = F.pad(x_bthwd.permute(0, 4, 1, 2, 3), self.pad)
        return self.conv(x_bdthw).permute(0, 2, 3, 4, 1)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by ``scale_thw`` then a 3x3x3 conv, on ``(B, D, T, H, W)``."""

    def __init__(self, dim: int, scale_thw: list[int]) -> None:
        super().__init__()
        self.scale = tuple(float(s) for s in scale_thw)
        self.conv = nn.Conv3d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x_bdthw: torch.Tensor) -> torch.Tensor:
        # in fp32 and back, as the release does
        up = F.interpolate(x_bdthw.float(), scale_factor=self.scale, mode="nearest").to(x_bdthw.dtype)
        return self.conv(up)


class MotionEncoder(nn.Module):
    """``(B, 2, F, H, W)`` field -> ``(B, t, h, w, D)``: projection, space and time
    positional embeddings, then per stage ``blocks_per_stage`` blocks and a downsample."""

    def __init__(self, config: LaVITMotionConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        stages = len(config.strides)
        self.blocks_per_stage = config.blocks_per_stage
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(dim, config.num_heads, config.mlp_ratio)
            for _ in range(stages * config.blocks_per_stage)
        )
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.height * config.width, dim))
        self.temp_pos = nn.Parameter(torch.zeros(1, config.frames, dim))
        self.down_sample_layers = nn.ModuleList(Downsample(dim, stride) for stride in config.strides)
        self.in_proj = nn.Linear(config.in_channels, dim)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        nn.init.trunc_normal_(self.temp_pos, std=INIT_STD)
        self.apply(init_weights)

    def forward(self, fields_bcfhw: torch.Tensor) -> torch.Tensor:
        batch, _, frames, height, width = fields_bcfhw.shape
        x_bthwd = self.in_proj(fields_bcfhw.permute(0, 2, 3, 4, 1))
        x_btsd = x_bthwd.reshape(batch, frames, height * width, -1)
        x_btsd = x_btsd + self.pos_embed[:, None] + self.temp_pos[:, :, None]
        for stage, down in enumerate(self.down_sample_layers):
            first = stage * self.blocks_per_stage
            for block in self.blocks[first : first + self.blocks_per_stage]:
                x_btsd = block(x_btsd)
            x_bthwd = down(x_btsd.reshape(batch, frames, height, width, -1))
            _, frames, height, width, _ = x_bthwd.shape
            x_btsd = x_bthwd.reshape(batch, frames, height * width, -1)
        return self.norm(x_btsd).reshape(batch, frames, height, width, -1)


class MotionDecoder(nn.Module):
    """``(B, t, h, w, code_dim)`` -> ``(B, F, H, W, D)``: projection, then per stage an
    upsample (the encoder's strides in reverse) and ``blocks_per_stage`` blocks. No
    positional embeddings: the convolutions place the tokens."""

    def __init__(self, config: LaVITMotionConfig) -> None:
        super().__init__()
        dim = config.embed_dim
        stages = len(config.strides)
        self.blocks_per_stage = config.blocks_per_stage
        self.blocks = nn.ModuleList(
            SpaceTimeBlock(dim, config.num_heads, config.mlp_ratio)
            for _ in range(stages * config.blocks_per_stage)
        )
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)
        self.in_proj = nn.Linear(config.code_dim, dim)
        self.up_sample_layers = nn.ModuleList(Upsample(dim, stride) for stride in reversed(config.strides))
        self.apply(init_weights)

    def forward(self, codes_bthwc: torch.Tensor) -> torch.Tensor:
        x_bthwd = self.in_proj(codes_bthwc)
        for stage, up in enumerate(self.up_sample_layers):
            x_bthwd = up(x_bthwd.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
            batch, frames, height, width, dim = x_bthwd.shape
            x_btsd = x_bthwd.reshape(batch, frames, height * width, dim)
            first = stage * self.blocks_per_stage
            for block in self.blocks[first : first + self.blocks_per_stage]:
                x_btsd = block(x_btsd)
            x_bthwd = x_btsd.reshape(batch, frames, height, width, dim)
        return self.norm(x_bthwd)


class CosineCodebook(nn.Module):
    """The codebook (``embedding``: ``(codebook_size, code_dim)``, rows initialised to unit
    length) and its nearest-code search for unit-length latents."""

    def __init__(self, codebook_size: int, code_dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, code_dim)
        with torch.no_grad():
            self.embedding.weight.copy_(F.normalize(torch.randn(codebook_size, code_dim), dim=-1))

    def nearest(self, z_nc: torch.Tensor) -> torch.Tensor:
        """``(N,)`` int64: the row of least squared distance to each of ``z (N, code_dim)``.

        The rows are used as stored -- the release does not re-normalise them at look-up --
        and the full ``|z|^2 + |e|^2 - 2 z.e`` is evaluated as the release does, so that
        near-ties break the same way. With unit rows this is the cosine nearest code.
        Computed in fp32 whatever the module's dtype (a bf16 argmin over 1024 codes is
        coarse)."""
        z_nc, codes_kc = z_nc.float(), self.embedding.weight.float()
        dist_nk = z_nc.pow(2).sum(1, keepdim=True) + codes_kc.pow(2).sum(1) - 2 * z_nc @ codes_kc.t()
        return dist_nk.argmin(dim=1)
