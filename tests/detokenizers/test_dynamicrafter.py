"""The DynamiCrafter de-tokenizer on tiny configs: decoding, guidance, the UNet's
conditioning paths, input checks, the registry and what trains."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from divot_llm.config import compose_config
from divot_llm.config.loading import ConfigError
from divot_llm.detokenizers import build_video_detokenizer, video_detokenizer_class, zero_clip_features
from divot_llm.detokenizers.dynamicrafter import DynamiCrafterDetokenizer
from divot_llm.detokenizers.sampler import guided_prediction
from divot_llm.detokenizers.unet import sinusoidal_embedding
from divot_llm.detokenizers.unet_layers import CrossAttention


def activate(module: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Give the zero-initialised parameters (output projections, the fps embedding's last
    layer, the image-attention ``alpha``, norm biases) small random values, as training
    would: a fresh UNet predicts exactly 0, which would make comparisons vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * std)
    return module


def random_features(detok, batch: int = 2, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, detok.null_features.shape[0], detok.feature_dim, generator=gen)


def random_latents(detok, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *detok.latent_shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- decoding


def test_decode_gives_clips_in_range_and_follows_the_seed(tiny_detokenizer):
    detok = activate(tiny_detokenizer)
    features = random_features(detok)
    video = detok.decode(features, seed=1)
    cfg = detok.config
    assert video.shape == (2, cfg.num_frames, 3, cfg.image_size, cfg.image_size)
    assert video.dtype == torch.float32 and not video.requires_grad
    assert torch.isfinite(video).all() and video.min() >= -1 and video.max() <= 1
    assert video.std() > 0.01  # not a constant image
    assert torch.equal(detok.decode(features, seed=1), video)
    assert not torch.allclose(detok.decode(features, seed=2), video)
    assert detok.training  # decode restores the caller's mode


def test_guidance_one_is_the_conditional_prediction(tiny_detokenizer):
    detok = activate(tiny_detokenizer).eval()
    features = random_features(detok)
    x_t, t = random_latents(detok), torch.tensor(501)
    context = detok.image_proj_model(features)
    uncond = detok.image_proj_model(detok.null_features_like(features))
    fs = torch.full((2,), detok.config.frame_stride)
    with torch.no_grad():
        v_cond = detok.diffusion_model(x_t, t, context, fs)
        v_uncond = detok.diffusion_model(x_t, t, uncond, fs)
        assert torch.equal(detok.predict_velocity(x_t, t, context, uncond, 1.0, 0.7), v_cond)
        # Guided: both branches in one doubled batch give what separate calls give.
        torch.testing.assert_close(
            detok.predict_velocity(x_t, t, context, uncond, 7.5, 0.7),
            guided_prediction(v_cond, v_uncond, 7.5, 0.7),
            rtol=1e-3,
            atol=1e-4,  # batched vs separate fp32 reductions, amplified 7.5x by guidance
        )
    # Sampling: with guidance 1 the unconditional features are not used at all.
    reference = detok.decode(features, guidance=1.0, seed=3)
    guided = detok.decode(features, guidance=7.5, seed=3)
    detok.set_null_features(torch.randn_like(detok.null_features))
    assert torch.equal(detok.decode(features, guidance=1.0, seed=3), reference)
    assert not torch.allclose(detok.decode(features, guidance=7.5, seed=3), guided)


def test_null_features_are_the_tokenizers_zero_clip_features(tiny_detokenizer, tiny_tokenizer):
    zeros = torch.zeros(
        1, tiny_tokenizer.frames_per_clip, 3, tiny_tokenizer.input_size, tiny_tokenizer.input_size
    )
    torch.testing.assert_close(tiny_detokenizer.null_features, tiny_tokenizer.encode(zeros)[0])
    torch.testing.assert_close(zero_clip_features(tiny_tokenizer), tiny_detokenizer.null_features)


def test_guidance_without_null_features_explains_itself(tiny_config):
    detok = build_video_detokenizer(tiny_config)  # no tokenizer given
    features = torch.randn(1, 8, tiny_config.feature_dim)
    with pytest.raises(ValueError, match="zero-clip"):
        detok.decode(features, guidance=7.5)
    assert detok.decode(features, guidance=1.0, steps=2, seed=0).shape[0] == 1


@pytest.mark.parametrize(
    "features, message",
    [
        (torch.randn(2, 8, 17), "D=16"),
        (torch.randn(8, 16), "shape"),
        (torch.ones(2, 8, 16, dtype=torch.long), "floating"),
    ],
)
def test_bad_features_are_rejected(tiny_detokenizer, features, message):
    with pytest.raises(ValueError, match=message):
        tiny_detokenizer.decode(features)


def test_loss_rejects_clips_of_another_size(tiny_detokenizer):
    features = random_features(tiny_detokenizer)
    with pytest.raises(ValueError, match="expected clips"):
        tiny_detokenizer.loss(torch.zeros(2, 5, 3, 32, 32), features)  # 5 frames: the tokenizer's input


# ------------------------------------------------------------------------ the UNet


def test_dual_cross_attention_splits_text_and_image_tokens():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=8, heads=2, dim_head=4, context_dim=6, text_context_len=3)
    with torch.no_grad():
        attn.alpha.fill_(0.4)
    x, context = torch.randn(2, 5, 8), torch.randn(2, 7, 6)

    def attend(q, k, v):  # explicit per-head softmax attention
        q, k, v = (t.view(2, -1, 2, 4).transpose(1, 2) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(4), dim=-1)
        return (weights @ v).transpose(1, 2).reshape(2, -1, 8)

    q = attn.to_q(x)
    text = attend(q, attn.to_k(context[:, :3]), attn.to_v(context[:, :3]))
    image = attend(q, attn.to_k_ip(context[:, 3:]), attn.to_v_ip(context[:, 3:]))
    expected = attn.to_out(text + image * (math.tanh(0.4) + 1))
    torch.testing.assert_close(attn(x, context), expected)


def test_timestep_embedding_is_ldms_cos_then_sin():
    t = torch.tensor([0, 1, 981])
    half = 160
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    torch.testing.assert_close(
        sinusoidal_embedding(t, 320), torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    )


def test_unet_mixes_frames_but_not_clips(tiny_detokenizer):
    unet = activate(tiny_detokenizer.diffusion_model).eval()
    x, context = random_latents(tiny_detokenizer), torch.randn(2, 12, tiny_detokenizer.config.context_dim)
    with torch.no_grad():
        out = unet(x, torch.tensor(400), context)
        x2 = x.clone()
        x2[0, :, 0] += 1.0  # change the first frame of clip 0
        out2 = unet(x2, torch.tensor(400), context)
    assert torch.equal(out2[1], out[1])  # clip 1 untouched
    assert not torch.allclose(out2[0, :, -1], out[0, :, -1])  # the last frame of clip 0 sees it


def test_unet_uses_the_timestep_the_frame_stride_and_both_context_paths(tiny_detokenizer):
    unet = activate(tiny_detokenizer.diffusion_model).eval()
    cfg = tiny_detokenizer.config
    x, context = random_latents(tiny_detokenizer), torch.randn(2, cfg.condition_tokens, cfg.context_dim)

    def run(t=400, fs=None, ctx=context):
        with torch.no_grad():
            return unet(x, torch.tensor(t), ctx, fs)

    base = run()
    assert torch.equal(run(fs=torch.full((2,), cfg.frame_stride)), base)  # default fs is the config's
    assert not torch.allclose(run(fs=torch.full((2,), 8)), base)
    assert not torch.allclose(run(t=900), base)
    for token in (0, cfg.text_context_len):  # a "text" token, then an "image" token
        ctx = context.clone()
        ctx[:, token] += 1.0
        assert not torch.allclose(run(ctx=ctx), base), token


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, tiny_tokenizer):
    torch.manual_seed(0)
    plain = activate(build_video_detokenizer(tiny_config, tokenizer=tiny_tokenizer))
    checkpointed = build_video_detokenizer(dataclasses.replace(tiny_config, gradient_checkpointing=True))
    checkpointed.load_state_dict(plain.state_dict())
    video = torch.rand(2, tiny_config.num_frames, 3, tiny_config.image_size, tiny_config.image_size) * 2 - 1
    features = random_features(plain)
    for detok in (plain, checkpointed):
        detok.loss(video, features, generator=torch.Generator().manual_seed(4)).backward()
    for (name, p1), p2 in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        if p1.grad is not None:
            torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-4, atol=1e-6, msg=name)


# -------------------------------------------------------------------- training bits


def test_vae_is_frozen_and_stays_in_eval_mode(tiny_detokenizer):
    detok = tiny_detokenizer.train()
    assert not detok.first_stage_model.training and detok.diffusion_model.training
    assert not any(p.requires_grad for p in detok.first_stage_model.parameters())
    detok.set_trainable(diffusion_model=False, image_proj_model=True)
    video = torch.rand(2, detok.num_frames, 3, detok.image_size, detok.image_size) * 2 - 1
    detok.loss(video, random_features(detok), generator=torch.Generator().manual_seed(0)).backward()
    assert all(p.grad is None for p in detok.first_stage_model.parameters())
    assert all(p.grad is None for p in detok.diffusion_model.parameters())
    assert all(p.grad is not None for p in detok.image_proj_model.parameters())


def test_conditioning_dropout_replaces_features_with_the_null_features(tiny_detokenizer):
    detok = activate(tiny_detokenizer)
    video = torch.rand(2, detok.num_frames, 3, detok.image_size, detok.image_size) * 2 - 1
    a, b = random_features(detok, seed=1), random_features(detok, seed=2)

    def loss(features, p):
        with torch.no_grad():
            return detok.loss(video, features, cond_drop_prob=p, generator=torch.Generator().manual_seed(7))

    assert torch.equal(loss(a, 1.0), loss(b, 1.0))  # every clip dropped: features unused
    assert not torch.equal(loss(a, 0.0), loss(b, 0.0))


# ------------------------------------------------------------------------ registry


def test_registry_builds_by_arch_and_checks_the_config(tiny_config):
    assert video_detokenizer_class("dynamicrafter") is DynamiCrafterDetokenizer
    node = compose_config(["detokenizer=tiny"]).detokenizer
    assert isinstance(build_video_detokenizer(node), DynamiCrafterDetokenizer)
    with pytest.raises(ValueError, match="unknown video de-tokenizer arch 'vdm'"):
        video_detokenizer_class("vdm")
    with pytest.raises(ConfigError, match="detokenizer.pretrained_path must be set"):
        build_video_detokenizer(compose_config(["detokenizer=divot"]).detokenizer)
    with pytest.raises(ConfigError, match="unknown keys"):
        build_video_detokenizer(dataclasses.asdict(tiny_config) | {"unet_channels": 3})
    with pytest.raises(ValueError, match="multiples of 32"):
        build_video_detokenizer(dataclasses.replace(tiny_config, model_channels=48))
