"""VidTok's PatchGAN discriminators (pix2pix's N-layer design): a per-frame 2D one -- what
every released config trains with -- and a 3D variant that also looks across frames.

Both end in a map of real/fake logits, one per patch. Module names follow the seed's
(``main.<i>``), so a discriminator state dict of a VidTok training run loads as is.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

KERNEL_2D, KERNEL_3D = 4, 3
MAX_WIDTH_MULT = 8  # the widest layer has at most 8 x ndf channels


def _widths(ndf: int, n_layers: int) -> list[int]:
    """Channels after each conv but the last: ndf, 2 ndf, 4 ndf, ... (capped at 8 ndf)."""
    return [ndf * min(2**n, MAX_WIDTH_MULT) for n in range(n_layers + 1)]


def init_discriminator_weights(module: nn.Module) -> None:
    """The seed's init (``module.apply``): conv weights ~ N(0, 0.02), batch-norm scales
    ~ N(1, 0.02) with zero shifts."""
    if isinstance(module, nn.Conv2d | nn.Conv3d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm3d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class PatchDiscriminator2D(nn.Module):
    """Per-frame PatchGAN: ``(N, 3, H, W)`` -> logits ``(N, 1, h, w)``.

    ``n_layers`` stride-2 convs (the first without a norm), one stride-1 conv with a norm,
    and a stride-1 conv to one channel; 4x4 kernels, batch norm, LeakyReLU(0.2). Convs
    followed by a batch norm carry no bias (the norm's shift replaces it).
    """

    per_frame: ClassVar[bool] = True  # judges frames, not clips

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        widths = _widths(ndf, n_layers)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], KERNEL_2D, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        for n in range(1, n_layers + 1):
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(widths[n - 1], widths[n], KERNEL_2D, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(widths[n]),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(widths[-1], 1, KERNEL_2D, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_discriminator_weights)

    def forward(self, frames_nchw: torch.Tensor) -> torch.Tensor:
        return self.main(frames_nchw)


class PatchDiscriminator3D(nn.Module):
    """Spatio-temporal PatchGAN: ``(B, 3, T, H, W)`` -> logits ``(B, 1, t, h, w)``.

    The 2D design with 3x3x3 kernels; only the first two convs also halve time, the
    others halve height and width (and the last two keep all three).
    """

    per_frame: ClassVar[bool] = False

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        widths = _widths(ndf, n_layers)
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, widths[0], KERNEL_3D, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        for n in range(1, n_layers + 1):
            stride = (2 if n == 1 else 1, 2, 2) if n < n_layers else 1
            layers += [
                nn.Conv3d(widths[n - 1], widths[n], KERNEL_3D, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(widths[n]),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv3d(widths[-1], 1, KERNEL_3D, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(init_discriminator_weights)

    def forward(self, video_bcthw: torch.Tensor) -> torch.Tensor:
        return self.main(video_bcthw)


def build_discriminator(kind: str, ndf: int = 64, n_layers: int = 3) -> nn.Module:
    """``"2d"`` (per frame) or ``"3d"``."""
    if kind == "2d":
        return PatchDiscriminator2D(3, ndf, n_layers)
    if kind == "3d":
        return PatchDiscriminator3D(3, ndf, n_layers)
    raise ValueError(f"discriminator kind must be '2d' or '3d', got {kind!r}")
