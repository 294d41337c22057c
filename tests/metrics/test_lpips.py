"""LPIPS: random weights saved in the released files' layouts load strictly through the real
loaders, and the distance equals LPIPS written out layer by layer from those files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from divot_llm.config.schema import EvalConfig
from divot_llm.metrics import LPIPS, load_lpips

CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)  # torchvision vgg16.features conv indices
POOLED_AFTER = (2, 7, 14, 21)  # a 2x2 max-pool follows these convs' ReLU
TAPPED_AFTER = (2, 7, 14, 21, 28)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def direct_lpips(vgg: dict, heads: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    def taps(image):
        h = (image - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
            [0.458, 0.448, 0.450]
        ).view(1, 3, 1, 1)
        out = []
        for index in CONVS:
            h = F.relu(F.conv2d(h, vgg[f"features.{index}.weight"], vgg[f"features.{index}.bias"], padding=1))
            if index in TAPPED_AFTER:
                out.append(h)
            if index in POOLED_AFTER:
                h = F.max_pool2d(h, 2)
        return out

    total = 0
    for k, (fx, fy) in enumerate(zip(taps(x), taps(y), strict=True)):
        nx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
        ny = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
        weight_c = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total = total + (weight_c * (nx - ny) ** 2).sum(dim=1).mean(dim=(1, 2))
    return total


def test_saved_weights_load_strictly_and_the_distance_is_lpips(lpips_files):
    model = LPIPS.from_paths(lpips_files.vgg, lpips_files.heads)
    original = lpips_files.model.state_dict()
    assert model.state_dict().keys() == original.keys()
    assert all(torch.equal(tensor, original[name]) for name, tensor in model.state_dict().items())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.5 * torch.randn(2, 3, 32, 32)).clamp(-1, 1)
    vgg, heads = (
        torch.load(lpips_files.vgg, weights_only=True),
        torch.load(lpips_files.heads, weights_only=True),
    )
    expected = direct_lpips(vgg, heads, x, y)
    torch.testing.assert_close(model(x, y), expected, rtol=1e-4, atol=1e-6)
    assert (expected > 0).all()
    torch.testing.assert_close(model(x, x), torch.zeros(2))
    clips = model.clips(y.view(1, 2, 3, 32, 32), x.view(1, 2, 3, 32, 32))  # a clip: frames averaged
    torch.testing.assert_close(clips, expected.mean().view(1), rtol=1e-4, atol=1e-6)


def test_gradients_reach_the_inputs_but_never_the_weights(lpips_files):
    model = lpips_files.model.train()  # train mode changes nothing: no dropout, no norm statistics
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_()
    model(x, torch.zeros(1, 3, 16, 16)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_wrong_files_and_half_configs_are_refused(lpips_files):
    with pytest.raises(ValueError, match="not a torchvision vgg16"):
        LPIPS.from_paths(lpips_files.heads, lpips_files.heads)  # the heads file given as VGG
    with pytest.raises(ValueError, match="LPIPS VGG heads"):
        LPIPS.from_paths(lpips_files.vgg, lpips_files.vgg)
    assert load_lpips(EvalConfig()) is None
    with pytest.raises(ValueError, match="lpips_heads_path"):
        load_lpips(EvalConfig(lpips_path=str(lpips_files.vgg)))
