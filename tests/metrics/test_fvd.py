"""FVD: the I3D input geometry, a saved TorchScript detector through the real loader, and
the Fréchet distance against a direct numpy computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from divot_llm.metrics import frechet_distance, i3d_features, i3d_input, load_i3d


def test_i3d_input_resizes_the_shorter_side_to_224_and_crops_the_centre():
    square = torch.rand(2, 10, 3, 224, 224) * 2 - 1
    torch.testing.assert_close(i3d_input(square), square.transpose(1, 2))
    wide = torch.rand(1, 10, 3, 112, 168) * 2 - 1  # -> 224 x 336, columns 56..280 kept
    doubled = F.interpolate(wide[0], scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(i3d_input(wide)[0], doubled[:, :, :, 56:280].transpose(0, 1))
    tall = wide.transpose(-1, -2)  # the same along the other axis
    torch.testing.assert_close(i3d_input(tall), i3d_input(wide).transpose(-1, -2))


def test_saved_torchscript_i3d_gives_the_features_of_a_direct_call(i3d_file):
    detector = load_i3d(i3d_file)
    clips = torch.rand(3, 10, 3, 112, 112) * 2 - 1
    expected = detector(i3d_input(clips), rescale=False, resize=False, return_features=True)
    feats = i3d_features(detector, clips, batch_size=2)  # two calls
    assert feats.dtype == torch.float64 and feats.shape == (3, 12)
    torch.testing.assert_close(feats, expected.double())
    with pytest.raises(ValueError, match="at least 10 frames"):
        i3d_features(detector, clips[:, :9])


def test_a_file_that_is_not_torchscript_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="not a TorchScript I3D"):
        load_i3d(tmp_path / "state.pt")


def test_frechet_distance_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 6)) + 0.5
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    trace_root = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)).sum()  # tr sqrtm(S_a S_b)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(a)) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match=">= 2"):
        frechet_distance(torch.from_numpy(a[:1]), torch.from_numpy(b))
