"""Training pieces: de-tokenizer training really learns and uses its conditioning, tokenizer
training through the diffusion loss trains exactly the parts it should."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from divot_llm.data.clip_sampling import clip_positions
from divot_llm.detokenizers import build_video_detokenizer, zero_clip_features
from divot_llm.detokenizers.training import (
    TokenizerDiffusionObjective,
    apply_reference_zero_init,
    reconstruction_validation,
    tokenizer_features,
    tokenizer_frame_positions,
    trainable_parameter_names,
)
from divot_llm.metrics import mean_colour_guess, psnr, ssim


def colour_clips(frames: int, size: int) -> torch.Tensor:
    """Two clips ``(2, F, 3, S, S)``: a reddish and a bluish one, each slowly brightening."""
    ramp = torch.linspace(0, 0.1, frames)[:, None, None, None]
    red = torch.tensor([0.9, -0.2, -0.9])[None, :, None, None] + ramp
    blue = torch.tensor([-0.9, 0.3, 0.8])[None, :, None, None] + ramp
    return torch.stack([red, blue]).expand(2, frames, 3, size, size).clone()


def near_deterministic_posterior(detok) -> None:
    """Make the random VAE's posterior as sharp as a trained one's (SD's posterior std is
    ~1e-3; a random VAE's is ~1, which would bury every clip under sampling noise): the
    log-variance half of ``quant_conv`` is set to a constant -20."""
    quant = detok.first_stage_model.quant_conv
    with torch.no_grad():
        quant.weight[detok.config.latent_channels :] = 0
        quant.bias[detok.config.latent_channels :] = -20.0


def test_tokenizer_sees_the_data_pipelines_frames():
    assert tokenizer_frame_positions(16, 5) == [0, 4, 8, 12, 15] == clip_positions().tolist()
    assert tokenizer_frame_positions(8, 5) == [0, 2, 4, 6, 7]
    with pytest.raises(ValueError, match="cannot feed"):
        tokenizer_frame_positions(3, 5)


def test_training_lowers_the_loss_and_reconstructions_follow_the_conditioning(tiny_config, tiny_tokenizer):
    # The tiny UNet with one level (fast to train on CPU), 4-frame clips.
    config = dataclasses.replace(tiny_config, channel_mult=[1], attention_resolutions=[1], num_frames=4)
    detok = build_video_detokenizer(config, tokenizer=tiny_tokenizer)
    near_deterministic_posterior(detok)
    video = colour_clips(config.num_frames, config.image_size)
    # Unit-variance latents, the way SD's 0.18215 was chosen for its VAE.
    detok.config.scale_factor = 1.0
    detok.config.scale_factor = 1.0 / detok.encode_latents(video).std().item()
    features = tokenizer_features(tiny_tokenizer, video)  # the frozen tokenizer sees frames 0, 1, 2, 3, 3

    def eval_loss() -> float:
        with torch.no_grad():
            draws = [torch.Generator().manual_seed(s) for s in range(4)]
            return sum(detok.loss(video, features, cond_drop_prob=0.0, generator=g).item() for g in draws) / 4

    before = eval_loss()
    optimizer = torch.optim.AdamW(
        [p for p in detok.parameters() if p.requires_grad], lr=3e-3, weight_decay=0.0
    )
    gen = torch.Generator().manual_seed(1)
    batch, batch_features = video.repeat(2, 1, 1, 1, 1), features.repeat(2, 1, 1)
    # 80 steps: the loss falls to ~0.27 of its start and each clip's own features decode
    # ~3 dB closer than the other clip's (110 steps: 0.19, 5-6 dB); 40 steps: 0.46, < 1 dB
    for _ in range(80):
        loss = detok(batch, batch_features, generator=gen)  # forward = loss, with CFG dropout
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)

    # The best this VAE can do: decode(encode(clip)). Same seed for both reconstructions.
    with torch.no_grad():
        target = detok.decode_latents(detok.encode_latents(video)).clamp(-1, 1)
    own = psnr(detok.decode(features, steps=10, guidance=1.0, seed=0), target)
    swapped = psnr(detok.decode(features.flip(0), steps=10, guidance=1.0, seed=0), target)
    assert (own > swapped + 1.0).all(), (own, swapped)


def test_tokenizer_training_changes_only_the_parts_it_should(tiny_config, tiny_tokenizer):
    detok = build_video_detokenizer(tiny_config, tokenizer=tiny_tokenizer)
    objective = TokenizerDiffusionObjective(tiny_tokenizer, detok)
    frozen = {"tokenizer.vit.", "detokenizer.first_stage_model.", "detokenizer.null_features"}
    trainable = trainable_parameter_names(objective)
    assert {n.split(".")[0] + "." + n.split(".")[1] for n in trainable} == {
        "tokenizer.encoder",
        "detokenizer.diffusion_model",
        "detokenizer.image_proj_model",
    }
    before = {k: v.clone() for k, v in objective.state_dict().items()}

    optimizer = torch.optim.AdamW(
        [p for p in objective.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0
    )
    video = torch.rand(2, tiny_config.num_frames, 3, tiny_config.image_size, tiny_config.image_size) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    # Zero-initialised layers pass gradients on one step at a time; 6 steps reach them all.
    for _ in range(6):
        loss = objective(video, generator=gen)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    after = objective.state_dict()
    for name, tensor in before.items():
        changed = not torch.equal(after[name], tensor)
        if name.startswith(tuple(frozen)):
            assert not changed, f"{name} is frozen but changed"
        elif name in trainable:
            assert changed, f"{name} is trained but did not change"
    for part in ("temporal_encoder", "norm", "image_proj_model.blocks", "image_proj_model.down_sampler"):
        assert any(n.startswith(f"tokenizer.encoder.{part}") for n in trainable), part

    # Its unconditional input follows the tokenizer being trained.
    objective.refresh_null_features()
    torch.testing.assert_close(detok.null_features, zero_clip_features(tiny_tokenizer))


def test_dropped_clips_become_zero_clips_before_the_tokenizer(tiny_config, tiny_tokenizer):
    detok = build_video_detokenizer(tiny_config, tokenizer=tiny_tokenizer)
    objective = TokenizerDiffusionObjective(tiny_tokenizer, detok, cond_drop_prob=1.0)
    video = torch.rand(2, tiny_config.num_frames, 3, tiny_config.image_size, tiny_config.image_size) * 2 - 1
    with torch.no_grad():
        dropped = objective(video, generator=torch.Generator().manual_seed(3))
        gen = torch.Generator().manual_seed(3)
        torch.rand(2, generator=gen)  # the objective's dropout draw
        null = zero_clip_features(tiny_tokenizer).expand(2, -1, -1)
        expected = detok.loss(video, null, cond_drop_prob=0.0, generator=gen)
    torch.testing.assert_close(dropped, expected)


def test_reference_zero_init_starts_every_clip_at_the_same_features(tiny_tokenizer):
    apply_reference_zero_init(tiny_tokenizer.encoder.temporal_encoder)
    clips = torch.rand(2, tiny_tokenizer.frames_per_clip, 3, 64, 64) * 2 - 1
    features = tiny_tokenizer.encode(clips)
    torch.testing.assert_close(features[0], features[1])
    assert np.allclose(tiny_tokenizer.encoder.temporal_encoder.input_proj.weight.diagonal().numpy(), 1.0)


def test_tokenizer_objective_trains_inside_a_deepspeed_engine(ds_process_group, tiny_config, tiny_tokenizer):
    """The objective is an ordinary module for the engine issue 6's trainer builds (ZeRO-2)."""
    import deepspeed

    detok = build_video_detokenizer(tiny_config, tokenizer=tiny_tokenizer)
    objective = TokenizerDiffusionObjective(tiny_tokenizer, detok)
    vit_before = {k: v.clone() for k, v in tiny_tokenizer.vit.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-3)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 2},
        "gradient_clipping": 1.0,
    }
    engine, *_ = deepspeed.initialize(model=objective, optimizer=optimizer, config=config)
    video = torch.rand(2, tiny_config.num_frames, 3, tiny_config.image_size, tiny_config.image_size) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    weight_before = tiny_tokenizer.encoder.temporal_encoder.output_proj.weight.clone()
    for _ in range(3):
        loss = engine(video, generator=gen)
        engine.backward(loss)
        engine.step()
        assert torch.isfinite(loss)
    assert not torch.equal(tiny_tokenizer.encoder.temporal_encoder.output_proj.weight, weight_before)
    assert all(torch.equal(v, vit_before[k]) for k, v in tiny_tokenizer.vit.state_dict().items())


def test_reconstruction_validation_reports_psnr_and_ssim_of_decoded_clips(tiny_detokenizer, tiny_tokenizer):
    cfg = tiny_detokenizer.config
    video = colour_clips(cfg.num_frames, cfg.image_size)
    metrics = reconstruction_validation(tiny_detokenizer, tiny_tokenizer, video, steps=2, seed=4)
    recon = tiny_detokenizer.decode(tokenizer_features(tiny_tokenizer, video), steps=2, seed=4)
    assert metrics == pytest.approx(
        {
            "psnr": psnr(recon, video).mean().item(),
            "ssim": ssim(recon, video).mean().item(),
            "psnr_mean_colour": psnr(mean_colour_guess(video), video).mean().item(),
            "psnr_clip_colour": psnr(mean_colour_guess(video, per_clip=True), video).mean().item(),
        }
    )
