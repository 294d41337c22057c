"""Our VidTok computes what VidTok's own code computes (tests/fixtures/vidtok, written by
tools/vidtok_fixtures.py from microsoft/VidTok@d6ad92d): tiny KL and FSQ models, causal and
non-causal, 4x8x8 and 4x16x16 (and group norm, which no release uses), with the same
deterministic weights (temporal blocks' zero-initialised convolutions, norm gains and mix
factors perturbed) and input."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from divot_llm.tokenizers.vidtok import VidTokAutoencoder
from tests.tokenizers.vidtok.conftest import FIXTURES, tiny_case_config

CASE_NAMES = [
    f"{reg}_{kind}_{comp}"
    for reg in ("kl", "fsq")
    for kind in ("causal", "noncausal")
    for comp in ("488", "41616")
] + ["kl_causal_488_groupnorm", "kl_noncausal_488_groupnorm"]
# fp32 rounding, not a difference in the computation: the fixtures were made on one CPU and
# torch's conv kernels round differently on another (an AVX-512 EPYC: latents 3.6e-5 apart,
# and the tiny random GroupNorm decoders, whose groups have little variance, amplify that to
# 1.6e-4 of the output's range); a wrong layer, padding or key moves outputs by 1e-2 or more
ATOL = 1e-3


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= ATOL * max(1.0, theirs.abs().max().item())


@pytest.mark.parametrize("name", CASE_NAMES)
def test_tiny_model_matches_vidtok(name, fixture_tool):
    case = fixture_tool.CASES[name]
    model = VidTokAutoencoder(tiny_case_config(fixture_tool, case))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    model.load_state_dict(fixture_tool.fixture_weights(shapes), strict=True)
    # the perturbation reached what VidTok zero-initialises
    temporal_conv2 = model.encoder.down_temporal[0].block[0].conv2
    assert (temporal_conv2.conv if case["causal"] else temporal_conv2).weight.abs().min() > 0
    expected = load_file(FIXTURES / f"tiny_{name}.safetensors")
    video = fixture_tool.fixture_video((1, 3, *case["input_thw"]))

    z, log = model.encode(video, step=fixture_tool.AUX_STEP)  # grad enabled: FSQ's aux loss too
    assert_close(z.detach(), expected["latents"])
    if case["regularizer"] == "kl":
        assert_close(log["kl_loss"].detach().reshape(1), expected["kl_loss"])
    else:
        assert log["indices"].dtype == torch.int64
        assert torch.equal(log["indices"], expected["indices"])
        assert_close(log["aux_loss"].detach().reshape(1), expected["aux_loss"])
    with torch.no_grad():  # VidTok's latents, so that decoding is compared on its own input
        assert_close(model.decode(expected["latents"]), expected["decoded"])
        if case["regularizer"] == "fsq":
            assert torch.equal(model.decode_indices(expected["indices"]), model.decode(z))
    assert expected["decoded"].shape[2] == case["input_thw"][0]  # these lengths round-trip


@pytest.mark.parametrize("levels", [[8] * 6, [8] * 5, [8] * 4])
def test_fsq_codes_and_indices_are_bit_identical_to_vidtok(levels):
    from vector_quantize_pytorch import FSQ

    tag = f"{len(levels)}x{levels[0]}"
    expected = load_file(FIXTURES / "fsq_levels.safetensors")
    codes, indices = FSQ(levels=levels)(expected[f"latents_{tag}"])
    assert torch.equal(codes, expected[f"codes_{tag}"])
    assert torch.equal(indices, expected[f"indices_{tag}"])
    assert len(indices.unique()) > 8  # the latents spread over many codes
