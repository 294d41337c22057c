"""Random-weight files in the formats the metric loaders read: LPIPS's VGG16 (torchvision's
state dict layout) and heads (taming-transformers' vgg.pth keys), and a tiny TorchScript
I3D with StyleGAN-V's call signature."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from divot_llm.metrics import LPIPS


@dataclass(frozen=True)
class LpipsFiles:
    vgg: Path
    heads: Path
    model: LPIPS  # the module whose weights the files hold


class TinyI3D(nn.Module):
    """Stands in for ``i3d_torchscript.pt``: same call, ``(B, 3, T, 224, 224)`` -> ``(B, 12)``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(3, 6, kernel_size=(4, 16, 16), stride=(2, 16, 16))
        self.head = nn.Linear(12, 12)

    def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
        h = self.conv(x)  # (B, 6, T', 14, 14)
        feats = self.head(torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1))
        return feats if return_features else feats.softmax(dim=1)


@pytest.fixture(scope="session")
def lpips_files(tmp_path_factory) -> LpipsFiles:
    torch.manual_seed(1)
    model = LPIPS()
    folder = tmp_path_factory.mktemp("lpips")
    vgg = {f"features.{k}": v for k, v in model.vgg.features.state_dict().items()}
    vgg["classifier.6.bias"] = torch.zeros(1000)  # torchvision's file has the classifier too: unused
    torch.save(vgg, folder / "vgg16.pth")
    torch.save(model.heads.state_dict(), folder / "vgg.pth")
    return LpipsFiles(folder / "vgg16.pth", folder / "vgg.pth", model)


@pytest.fixture(scope="session")
def i3d_file(tmp_path_factory) -> Path:
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    torch.jit.script(TinyI3D().eval()).save(str(path))
    return path
