"""What the VidTok tokenizer hands the LLM, and back: normalised KL latents or FSQ code
digits in p x p patches (docs/vidtok.md, "The LLM over VidTok features"), the token
budget, and the latent statistics stored with the tokenizer."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from divot_llm.config.schema import ModelConfig, ResamplerConfig
from divot_llm.data.feature_cache import tokenizer_fingerprint
from divot_llm.model import llm_tokens_per_clip
from divot_llm.text import NUM_FRAME_TOKENS
from divot_llm.tokenizers import build_video_tokenizer

MEAN = [0.5, -1.0, 0.25, 2.0]
STD = [2.0, 0.5, 4.0, 1.5]


# 9-frame clips (as experiment=vidtok_tiny): 3 x 4 x 4 latents
@pytest.fixture(scope="module")
def kl_config(vidtok_tiny_config):
    return dataclasses.replace(vidtok_tiny_config, frames_per_clip=9)


@pytest.fixture(scope="module")
def fsq_config(vidtok_tiny_fsq_config):
    return dataclasses.replace(vidtok_tiny_fsq_config, frames_per_clip=9)


def clips(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 9, 3, 32, 32) * 2 - 1


def expected_layout(grid_bcthw: torch.Tensor, p: int) -> torch.Tensor:
    """The documented layout, element by element: token (t, row, col) time-major, feature
    (c, a, b) channel-major inside the p x p patch."""
    batch, channels, frames, height, width = grid_bcthw.shape
    rows, cols = height // p, width // p
    out = torch.empty(batch, frames * rows * cols, channels * p * p, dtype=grid_bcthw.dtype)
    for t in range(frames):
        for row in range(rows):
            for col in range(cols):
                for c in range(channels):
                    for a in range(p):
                        for b in range(p):
                            token, feature = (t * rows + row) * cols + col, (c * p + a) * p + b
                            out[:, token, feature] = grid_bcthw[:, c, t, row * p + a, col * p + b]
    return out


@pytest.mark.parametrize("p", [1, 2])
def test_kl_features_are_normalised_latents_and_decode_back(kl_config, p):
    tokenizer = build_video_tokenizer(
        dataclasses.replace(kl_config, llm_patch_size=p, latent_mean=MEAN, latent_std=STD)
    )
    assert (tokenizer.num_tokens, tokenizer.feature_dim) == (3 * (4 // p) ** 2, 4 * p * p)
    assert tokenizer.feature_levels is None
    x = clips()
    latents_bcthw = tokenizer.encode_latents(x)  # (2, 4, 3, 4, 4)
    normalised = (latents_bcthw - torch.tensor(MEAN).view(1, 4, 1, 1, 1)) / torch.tensor(STD).view(
        1, 4, 1, 1, 1
    )
    feats_bnd = tokenizer.encode(x)
    assert feats_bnd.shape == (2, tokenizer.num_tokens, tokenizer.feature_dim)
    torch.testing.assert_close(feats_bnd, expected_layout(normalised, p), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        tokenizer.decode_features(feats_bnd), tokenizer.decode_latents(latents_bcthw), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("p", [1, 2])
def test_fsq_features_are_the_index_digits_and_decode_back(fsq_config, p):
    levels = [8, 5, 6, 4]  # unequal levels: each digit's place value shows
    tokenizer = build_video_tokenizer(dataclasses.replace(fsq_config, fsq_levels=levels, llm_patch_size=p))
    assert tokenizer.feature_levels == [level for level in levels for _ in range(p * p)]
    x = clips()
    indices_bthw = tokenizer.encode_indices(x)
    feats_bnd = tokenizer.encode(x)
    assert feats_bnd.shape == (2, 3 * (4 // p) ** 2, 4 * p * p) and feats_bnd.is_floating_point()
    assert torch.equal(feats_bnd, feats_bnd.round())
    assert (feats_bnd >= 0).all() and (feats_bnd < torch.tensor(tokenizer.feature_levels)).all()
    # digit c is channel c's code level (VidTok's codes run -1 .. 1 - 2/L in steps of 2/L,
    # i.e. (level - L//2) / (L//2)), and channel 0 is the index's least significant digit
    codes_bcthw = tokenizer.encode_latents(x)
    half = torch.tensor([level // 2 for level in levels]).view(1, 4, 1, 1, 1)
    digits_bcthw = (codes_bcthw * half + half).round()
    torch.testing.assert_close(feats_bnd, expected_layout(digits_bcthw, p), rtol=0, atol=0)
    place = torch.tensor([1, 8, 8 * 5, 8 * 5 * 6]).view(1, 4, 1, 1, 1)
    assert torch.equal((digits_bcthw.long() * place).sum(1), indices_bthw)
    frames = tokenizer.decode_indices(indices_bthw)
    assert torch.equal(tokenizer.decode_features(feats_bnd), frames)
    # generated digits may be off the grid: rounded, and clamped into [0, L)
    assert torch.equal(tokenizer.decode_features(feats_bnd + 0.3), frames)
    clamped = feats_bnd.clone()
    clamped[:, 0] = torch.tensor([100.0 if i % 2 else -7.0 for i in range(clamped.shape[2])])
    edge = torch.tensor([level - 1.0 if i % 2 else 0.0 for i, level in enumerate(tokenizer.feature_levels)])
    on_grid = feats_bnd.clone()
    on_grid[:, 0] = edge
    assert torch.equal(tokenizer.decode_features(clamped), tokenizer.decode_features(on_grid))


def test_token_budget_and_config_errors_name_the_key(kl_config, fsq_config):
    big = build_video_tokenizer(
        dataclasses.replace(kl_config, frames_per_clip=17, input_height=64, input_width=64)
    )
    # the tokenizer hands over any number of tokens (5 x 8 x 8 latents at p = 1) ...
    assert big.num_tokens == 320 and big.encode(torch.zeros(1, 17, 3, 64, 64)).shape == (1, 320, 4)
    # ... the LLM reads at most its 256 <frame_i> tokens one by one: the error names both ways out
    message = (
        r"gives 320 tokens per clip, more than the LLM's 256 frame tokens .* model.resampler.kind=queries .* "
        r"video_tokenizer.llm_patch_size=2 \(80 tokens of 16 features; .* latent grid 5 x 8 x 8"
    )
    with pytest.raises(ValueError, match=message):
        llm_tokens_per_clip(ModelConfig(), big)  # model.resampler.kind=tokenwise
    queries = ModelConfig(resampler=ResamplerConfig(kind="queries", num_queries=NUM_FRAME_TOKENS))
    assert llm_tokens_per_clip(queries, big) == NUM_FRAME_TOKENS
    with pytest.raises(ValueError, match=r"video_tokenizer.llm_patch_size=3 must divide the latent grid 4x4"):
        build_video_tokenizer(dataclasses.replace(kl_config, llm_patch_size=3))
    with pytest.raises(ValueError, match="video_tokenizer.latent_mean: an FSQ tokenizer"):
        build_video_tokenizer(dataclasses.replace(fsq_config, latent_mean=MEAN, latent_std=STD))
    with pytest.raises(ValueError, match="video_tokenizer.latent_std is set without the other"):
        build_video_tokenizer(dataclasses.replace(kl_config, latent_std=STD))
    with pytest.raises(ValueError, match="video_tokenizer.latent_mean has 3 values; .* z_channels=4"):
        build_video_tokenizer(dataclasses.replace(kl_config, latent_mean=MEAN[:3], latent_std=STD[:3]))


def test_statistics_come_from_the_saved_folder_and_count_in_the_cache_fingerprint(kl_config, tmp_path):
    source = build_video_tokenizer(dataclasses.replace(kl_config, latent_mean=MEAN, latent_std=STD))
    source.save_pretrained(tmp_path / "tok")
    from_folder = build_video_tokenizer(dataclasses.replace(kl_config, pretrained_path=str(tmp_path / "tok")))
    assert (from_folder.config.latent_mean, from_folder.config.latent_std) == (MEAN, STD)
    x = clips(1)
    assert torch.equal(from_folder.encode(x), source.encode(x))
    # a config's own statistics win over the folder's
    other = [1.0, 1.0, 1.0, 1.0]
    own = dataclasses.replace(
        kl_config, pretrained_path=str(tmp_path / "tok"), latent_mean=other, latent_std=other
    )
    assert build_video_tokenizer(own).config.latent_mean == other
    # A feature cache tells them apart although the composed configs (paths left out) are equal:
    # the fingerprint reads the statistics the tokenizer loaded.
    plain = build_video_tokenizer(kl_config)
    plain.load_state_dict(from_folder.state_dict())
    composed = dataclasses.asdict(kl_config)
    assert tokenizer_fingerprint(from_folder, composed) != tokenizer_fingerprint(plain, composed)
    patched = build_video_tokenizer(dataclasses.replace(kl_config, llm_patch_size=2))
    patched.load_state_dict(plain.state_dict())
    assert tokenizer_fingerprint(patched, composed) != tokenizer_fingerprint(plain, composed)
