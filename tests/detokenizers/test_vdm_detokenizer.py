"""The VDM de-tokenizer (arch ``vdm_detokenizer``) on the tiny config: the loss trains every part,
decoding is the seed's ancestral chain, and saved folders load back exactly."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch
from einops import rearrange

from divot_llm.config import compose_config
from divot_llm.detokenizers import build_video_detokenizer, zero_clip_features
from divot_llm.detokenizers.registry import load_video_detokenizer
from divot_llm.detokenizers.vdm import load_seed_checkpoint
from divot_llm.detokenizers.vdm_detokenizer import VdmDetokenizer, spaced_timesteps
from divot_llm.detokenizers.vdm_detokenizer_config import VdmDetokenizerConfig


@pytest.fixture(scope="module")
def vdm_config() -> VdmDetokenizerConfig:
    """conf/detokenizer/vdm_tiny.yaml, composed through Hydra like a real run."""
    return compose_config(["detokenizer=vdm_tiny"]).detokenizer


@pytest.fixture
def detok(vdm_config) -> VdmDetokenizer:
    return build_video_detokenizer(vdm_config)


def clips_and_features(detok: VdmDetokenizer, batch: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    cfg = detok.config
    video = torch.rand(batch, cfg.num_frames, 3, cfg.image_size, cfg.image_size, generator=gen) * 2 - 1
    return video, torch.randn(batch, 8, cfg.feature_dim, generator=gen)


def test_tiny_config_decodes_the_tiny_tokenizers_features(vdm_config, tiny_config, tiny_tokenizer):
    # the DynamiCrafter tiny de-tokenizer's clip format and the divot_tiny features
    for name in ("num_frames", "image_size", "fps", "feature_dim"):
        assert getattr(vdm_config, name) == getattr(tiny_config, name), name
    detok = build_video_detokenizer(vdm_config, tokenizer=tiny_tokenizer)
    assert isinstance(detok, VdmDetokenizer)
    torch.testing.assert_close(detok.null_features, zero_clip_features(tiny_tokenizer))
    assert compose_config(["detokenizer=vdm_64"]).detokenizer.dim_mults == [1, 2, 4, 8]


def test_loss_is_finite_and_reaches_every_part(detok):
    video, features = clips_and_features(detok)
    features.requires_grad_(True)
    loss = detok(video, features, generator=torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    for prefix in ("diffusion_model.denoise_fn.", "image_proj_model."):
        grads = [p.grad for n, p in detok.named_parameters() if n.startswith(prefix)]
        assert grads and any(g is not None and g.abs().sum() > 0 for g in grads), prefix
    # the same generator gives the same loss; the null embedding trains when clips are dropped
    detok.zero_grad()
    again = detok(video, features, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, loss)
    detok(video, features, cond_drop_prob=1.0).backward()
    assert detok.diffusion_model.denoise_fn.null_cond_emb.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="expected clips"):
        detok(video[:, :4], features)


def test_decode_gives_clips_in_range_conditioned_on_the_features(detok):
    _, features = clips_and_features(detok)
    video = detok.decode(features, steps=2, seed=1)
    cfg = detok.config
    assert video.shape == (2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    assert video.dtype == torch.float32 and not video.requires_grad
    assert video.min() >= -1 and video.max() <= 1 and video.std() > 0.01
    assert torch.equal(detok.decode(features, steps=2, seed=1), video)
    assert not torch.equal(detok.decode(features, steps=2, seed=2), video)
    assert not torch.equal(detok.decode(features + 1, steps=2, seed=1), video)


def test_every_timestep_is_the_seeds_ancestral_chain(vdm_config):
    # GaussianDiffusion.sample draws its noise from the global RNG in the same order as
    # decode draws from its generator: with the same seed the chains must agree
    detok = build_video_detokenizer(dataclasses.replace(vdm_config, timesteps=6))
    _, features = clips_and_features(detok)
    video = detok.decode(features, steps=6, guidance=2.0, seed=3)
    with torch.no_grad():
        cond = detok.image_proj_model(features)
        torch.manual_seed(3)
        seed_video = detok.diffusion_model.sample(cond=cond, cond_scale=2.0) * 2 - 1
    # (the posterior coefficients: float32 here, float64-computed buffers there)
    torch.testing.assert_close(video, rearrange(seed_video, "b c f h w -> b f c h w"), rtol=1e-4, atol=1e-4)
    assert spaced_timesteps(1000, 4) == [999, 666, 333, 0]
    assert spaced_timesteps(6, 50) == [5, 4, 3, 2, 1, 0]


def test_save_pretrained_round_trips_exactly(detok, tiny_tokenizer, tmp_path):
    detok.set_null_features(zero_clip_features(tiny_tokenizer))
    detok.save_pretrained(tmp_path)
    loaded = load_video_detokenizer(tmp_path)
    assert isinstance(loaded, VdmDetokenizer)
    assert loaded.config == dataclasses.replace(
        detok.config, pretrained_path=str(tmp_path / "detokenizer.safetensors")
    )
    saved = detok.state_dict()
    assert loaded.state_dict().keys() == saved.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    _, features = clips_and_features(detok)
    assert torch.equal(loaded.decode(features, steps=3, seed=0), detok.decode(features, steps=3, seed=0))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss(detok):
    video, features = clips_and_features(detok, batch=4)
    optimizer = torch.optim.Adam(detok.parameters(), lr=3e-3)

    def fixed_loss() -> torch.Tensor:  # same timesteps, noise and dropout every time
        return detok(video, features, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        before = fixed_loss().item()
    for _ in range(6):
        optimizer.zero_grad()
        fixed_loss().backward()
        optimizer.step()
    with torch.no_grad():
        after = fixed_loss().item()
    assert after < 0.8 * before, (before, after)


def test_cross_attention_reads_every_token(vdm_config, tmp_path):
    # mean pooling: a change of tokens that keeps their mean keeps the pooled vector
    detok = build_video_detokenizer(dataclasses.replace(vdm_config, cross_attention=True, pooling="mean"))
    unet = detok.diffusion_model.denoise_fn
    video, features = clips_and_features(detok)
    loss = detok(video, features, generator=torch.Generator().manual_seed(0))
    loss.backward()
    # the zero-initialised output projections are what the first step trains
    for block in (*unet.down_cross_attn, unet.mid_cross_attn, *unet.up_cross_attn):
        assert block.to_out.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for block in (*unet.down_cross_attn, unet.mid_cross_attn, *unet.up_cross_attn):
            for linear in (block.to_q, block.to_kv, block.to_out):  # as if trained: sharp attention
                linear.weight.normal_(std=0.5)
    # a change to tokens reaches the noise prediction even with the pooled vector held fixed
    shift_d = torch.randn(features.shape[-1], generator=torch.Generator().manual_seed(1))
    shifted = features.clone()
    shifted[:, 0] += shift_d
    shifted[:, 1] -= shift_d
    with torch.no_grad():
        cond = detok.image_proj_model(features)
        torch.testing.assert_close(detok.image_proj_model(shifted), cond)
        x_t = rearrange(video, "b f c h w -> b c f h w")
        t_b = torch.tensor([500, 500])
        eps = unet(x_t, t_b, cond=cond, context=features)
        assert (unet(x_t, t_b, cond=cond, context=shifted) - eps).abs().max() > 1e-2
    video_a = detok.decode(features, steps=2, seed=0)
    # dropped clips attend to the learned null token
    detok.zero_grad()
    detok(video, features, cond_drop_prob=1.0).backward()
    assert unet.null_context.grad.abs().sum() > 0 and unet.null_cond_emb.grad.abs().sum() > 0
    detok.save_pretrained(tmp_path)
    assert torch.equal(load_video_detokenizer(tmp_path).decode(features, steps=2, seed=0), video_a)


SEED_CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "vdm" / "tiny_checkpoint.pt"


def seed_checkpoint_config(vdm_config: VdmDetokenizerConfig, **changes) -> VdmDetokenizerConfig:
    """vdm_tiny changed to tests/fixtures/vdm/tiny.json's unet/diffusion kwargs."""
    spec = json.loads((SEED_CHECKPOINT.parent / "tiny.json").read_text())
    unet, diffusion = spec["unet"], spec["diffusion"]
    fields = {
        **{k: unet[k] for k in ("dim", "dim_mults", "cond_dim", "attn_heads", "attn_dim_head")},
        **{k: diffusion[k] for k in ("image_size", "num_frames", "timesteps", "loss_type")},
    }
    return dataclasses.replace(vdm_config, pretrained_path=str(SEED_CHECKPOINT), **{**fields, **changes})


@pytest.mark.parametrize("which", ["ema", "model"])
def test_a_seed_trainer_checkpoint_loads_strictly(vdm_config, which, caplog):
    config = seed_checkpoint_config(vdm_config, pretrained_weights=which)
    with caplog.at_level(logging.INFO, logger="divot_llm.detokenizers.vdm_detokenizer"):
        detok = build_video_detokenizer(config)
    assert "stays randomly initialised" in caplog.text
    seed_state = load_seed_checkpoint(SEED_CHECKPOINT)[which]
    loaded = detok.diffusion_model.state_dict()
    assert loaded.keys() == seed_state.keys()
    for name, tensor in seed_state.items():
        assert torch.equal(loaded[name], tensor), name
    # the pooled features condition the loaded UNet
    video = detok.decode(torch.randn(2, 8, config.feature_dim), steps=2, seed=0)
    assert video.shape == (2, 4, 3, 16, 16)


def test_a_seed_checkpoint_starts_the_cross_attention_model(vdm_config):
    # the zero-initialised cross-attention blocks are not in the seed's state dict
    detok = build_video_detokenizer(seed_checkpoint_config(vdm_config, cross_attention=True))
    seed_state = load_seed_checkpoint(SEED_CHECKPOINT)["ema"]
    loaded = detok.diffusion_model.state_dict()
    assert loaded.keys() > seed_state.keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in seed_state.items())


def test_a_seed_checkpoint_of_another_shape_names_the_keys(vdm_config):
    with pytest.raises(
        ValueError, match=r"shape mismatch .*denoise_fn\.null_cond_emb: checkpoint \(1, 8\), config \(1, 16\)"
    ):
        build_video_detokenizer(seed_checkpoint_config(vdm_config, cond_dim=16))
    with pytest.raises(ValueError, match=r"missing .*denoise_fn\.downs\.2"):
        build_video_detokenizer(seed_checkpoint_config(vdm_config, dim_mults=[1, 2, 2]))


def test_ddim_decode_is_gaussian_diffusions_ddim_sampler(vdm_config):
    assert vdm_config.sampler == "ancestral"  # the default (its chain: the seed-chain test above)
    detok = build_video_detokenizer(dataclasses.replace(vdm_config, sampler="ddim", ddim_eta=0.5))
    _, features = clips_and_features(detok)
    video = detok.decode(features, steps=3, guidance=2.0, seed=4)
    cfg = detok.config
    assert video.shape == (2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    assert video.min() >= -1 and video.max() <= 1 and video.std() > 0.01
    with torch.no_grad():
        cond = detok.image_proj_model(features)
        ddim = detok.diffusion_model.sample_ddim(
            cond=cond, cond_scale=2.0, steps=3, eta=0.5, generator=torch.Generator().manual_seed(4)
        )
    torch.testing.assert_close(video, rearrange(ddim * 2 - 1, "b c f h w -> b f c h w"))
    # not the ancestral chain from the same noise
    ancestral = build_video_detokenizer(vdm_config)
    ancestral.load_state_dict(detok.state_dict())
    assert not torch.allclose(ancestral.decode(features, steps=3, guidance=2.0, seed=4), video)
    # the tokens reach a cross-attention UNet through DDIM too
    cross = build_video_detokenizer(dataclasses.replace(detok.config, cross_attention=True, pooling="mean"))
    with torch.no_grad():
        for block in cross.diffusion_model.denoise_fn.up_cross_attn:
            block.to_out.weight.normal_(std=0.5)
    shift_d = torch.randn(features.shape[-1])
    shifted = features.clone()
    shifted[:, 0] += shift_d
    shifted[:, 1] -= shift_d  # the same mean-pooled vector
    assert not torch.allclose(cross.decode(shifted, steps=2, seed=0), cross.decode(features, steps=2, seed=0))


def test_pooling_none_feeds_the_one_vector_in_as_the_cond(vdm_config):
    # the seed's text conditioning: cond_dim is the text vector's width, nothing in between
    config = dataclasses.replace(vdm_config, pooling="none", feature_dim=vdm_config.cond_dim)
    detok = build_video_detokenizer(config)
    assert not list(detok.image_proj_model.parameters())
    feats_b1d = torch.randn(2, 1, config.cond_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(detok.image_proj_model(feats_b1d), feats_b1d[:, 0])
    with pytest.raises(ValueError, match=r"one feature vector per clip \(B, 1, D\), got 3 tokens"):
        detok.image_proj_model(feats_b1d.expand(-1, 3, -1))
    with pytest.raises(ValueError, match="feature_dim=16 must equal cond_dim=32"):
        build_video_detokenizer(dataclasses.replace(vdm_config, pooling="none"))


def test_prob_focus_present_reaches_the_unet_in_training(vdm_config):
    """Image + video co-training: with prob_focus_present=1 every clip's temporal attention
    sees only its own frame, so the same draws give another loss than with 0."""
    losses = []
    for prob in (0.0, 1.0):
        torch.manual_seed(0)
        detok = build_video_detokenizer(dataclasses.replace(vdm_config, prob_focus_present=prob))
        video, features = clips_and_features(detok)
        with torch.no_grad():
            losses.append(detok(video, features, generator=torch.Generator().manual_seed(0)).item())
    assert losses[0] != pytest.approx(losses[1], rel=1e-4), losses
