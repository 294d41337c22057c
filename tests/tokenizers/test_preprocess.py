"""In-module CLIP preprocessing: kornia-style antialiased bicubic resize + CLIP mean/std."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from divot_llm.tokenizers.preprocess import clip_preprocess, resize_antialiased

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def kornia_resize_reference(x: torch.Tensor, size: int) -> torch.Tensor:
    """kornia.geometry.resize(x, (size, size), 'bicubic', align_corners=True, antialias=True),
    written out with one 2-D Gaussian kernel (outer product) instead of two 1-D passes."""
    factor = x.shape[-1] / size
    sigma = max((factor - 1.0) / 2.0, 0.001)
    ksize = int(max(4.0 * sigma, 3))
    ksize += 1 - ksize % 2
    offsets = [i - ksize // 2 for i in range(ksize)]
    taps = torch.tensor([math.exp(-(o * o) / (2 * sigma * sigma)) for o in offsets], dtype=torch.float64)
    kernel = torch.outer(taps, taps) / taps.sum() ** 2
    pad = ksize // 2
    blurred = F.conv2d(
        F.pad(x.double(), (pad, pad, pad, pad), mode="reflect"),
        kernel.expand(x.shape[1], 1, ksize, ksize),
        groups=x.shape[1],
    )
    return F.interpolate(blurred, size=(size, size), mode="bicubic", align_corners=True).float()


@pytest.mark.parametrize("src,dst", [(256, 224), (64, 56), (256, 56)])
def test_downscale_matches_kornia_formula(src, dst):
    x = torch.rand(2, 3, src, src) * 2 - 1
    out = resize_antialiased(x, (dst, dst))
    assert out.shape == (2, 3, dst, dst)
    torch.testing.assert_close(out, kornia_resize_reference(x, dst), atol=1e-4, rtol=1e-4)


def test_strong_downscale_blurs_unlike_plain_bicubic():
    # 256 -> 56 gives sigma ~1.8 and a 7-tap kernel: the blur must be visible.
    x = torch.rand(1, 3, 256, 256)
    plain = F.interpolate(x, size=(56, 56), mode="bicubic", align_corners=True)
    assert (resize_antialiased(x, (56, 56)) - plain).abs().max() > 0.05


def test_upscale_and_same_size_do_not_blur():
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(
        resize_antialiased(x, (56, 56)), F.interpolate(x, size=(56, 56), mode="bicubic", align_corners=True)
    )
    assert resize_antialiased(x, (32, 32)) is x


def test_clip_preprocess_normalises_from_minus_one_one():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    expected = ((kornia_resize_reference(x, 56) + 1) / 2 - MEAN) / STD
    torch.testing.assert_close(clip_preprocess(x, 56), expected, atol=1e-4, rtol=1e-4)


def test_constant_frame_gives_clip_normalised_constant():
    # Resizing keeps a constant image constant, so the output is known in closed form.
    x = torch.full((1, 3, 256, 256), 0.5)
    out = clip_preprocess(x, 224)
    expected = ((0.5 + 1) / 2 - MEAN) / STD
    torch.testing.assert_close(out, expected.expand(1, 3, 224, 224), atol=1e-4, rtol=1e-4)


def test_low_precision_input_is_processed_in_fp32():
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).to(torch.bfloat16)
    out = clip_preprocess(x, 56)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, clip_preprocess(x.float(), 56))
