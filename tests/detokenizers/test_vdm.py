"""Our Unet3D + GaussianDiffusion against video-diffusion-pytorch 0.7.0's own outputs.

The fixtures in tests/fixtures/vdm/ were written from the seed package by
tools/vdm_fixtures.py (tiny.json records every call behind every tensor); the package is
never imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from divot_llm.detokenizers.vdm import GaussianDiffusion, build_vdm, load_seed_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vdm"


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads((FIXTURES / "tiny.json").read_text())


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return load_seed_checkpoint(FIXTURES / "tiny_checkpoint.pt")


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "tiny_io.safetensors")


@pytest.fixture(scope="module")
def diffusion(spec, checkpoint) -> GaussianDiffusion:
    """The tiny model with the checkpoint's ``model`` weights, in eval mode (as the fixtures)."""
    model = build_vdm(spec["unet"], spec["diffusion"])
    model.load_state_dict(checkpoint["model"], strict=True)
    return model.eval()


def test_readme_config_state_dict_table_is_the_seeds(spec):
    """dim=64, (1, 2, 4, 8), 5 frames of 32²: every key and shape of the seed's state dict,
    the schedule buffers and the rotary ``freqs`` copies (one per temporal attention: init,
    4 down, mid, 4 up) included."""
    readme = spec["readme_config"]
    with torch.device("meta"):
        model = build_vdm(readme["unet"], readme["diffusion"])
    table = {name: list(t.shape) for name, t in model.state_dict().items()}
    assert table == spec["readme_keys"]
    assert len(table) == spec["readme_state_dict_entries"] == 274
    assert sum(name.endswith("rotary_emb.freqs") for name in table) == 10


def test_seed_checkpoint_model_and_ema_load_strictly(spec, checkpoint):
    model = build_vdm(spec["unet"], spec["diffusion"])
    assert checkpoint["step"] == spec["checkpoint_step"]
    differing = [
        k for k in checkpoint["model"] if not torch.equal(checkpoint["model"][k], checkpoint["ema"][k])
    ]
    assert differing, "the fixture's ema must differ from model for this test to mean anything"
    for name in ("model", "ema"):
        model.load_state_dict(checkpoint[name], strict=True)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in checkpoint[name].items()), name


def test_load_seed_checkpoint_rejects_other_layouts(tmp_path, diffusion):
    bare = tmp_path / "bare.pt"
    torch.save(diffusion.state_dict(), bare)  # a bare state dict, not a Trainer checkpoint
    with pytest.raises(ValueError, match="not a video-diffusion-pytorch Trainer checkpoint"):
        load_seed_checkpoint(bare)


def _assert_close(name: str, ours: torch.Tensor, io: dict, spec: dict) -> None:
    tol = spec["tolerance"].get(name, spec["tolerance"]["default"])
    expected = io[name]
    assert ours.shape == expected.shape, name
    err = (ours - expected).abs().max().item()
    assert err <= tol, f"{name}: max |ours - seed| = {err:.3g} > {tol}"


@torch.no_grad()
def test_loss_denoising_and_one_step_match_the_seed(diffusion, io, spec):
    video, cond, noise, t = io["video"], io["cond"], io["noise"], io["t"]
    x_start = video * 2 - 1
    x_noisy = diffusion.q_sample(x_start, t, noise)
    _assert_close("x_noisy", x_noisy, io, spec)
    _assert_close("denoised", diffusion.denoise_fn(x_noisy, t, cond=cond), io, spec)
    mixed = torch.tensor([True, False])  # sample 0 attends to its own frame only
    _assert_close(
        "denoised_focus_mixed",
        diffusion.denoise_fn(x_noisy, t, cond=cond, focus_present_mask=mixed),
        io,
        spec,
    )
    _assert_close("loss", diffusion.p_losses(x_start, t, cond=cond, noise=noise), io, spec)
    focus = torch.ones(2, dtype=torch.bool)
    _assert_close(
        "loss_focus",
        diffusion.p_losses(x_start, t, cond=cond, noise=noise, focus_present_mask=focus),
        io,
        spec,
    )
    torch.manual_seed(spec["sample_seed"])  # forward draws t, then the noise
    _assert_close("loss_forward", diffusion(video, cond=cond), io, spec)
    mean, _, log_var = diffusion.p_mean_variance(
        x=x_noisy, t=t, clip_denoised=True, cond=cond, cond_scale=1.0
    )
    _assert_close("step_mean", mean, io, spec)
    _assert_close("step_log_var", log_var, io, spec)
    mean_cfg = diffusion.p_mean_variance(x=x_noisy, t=t, clip_denoised=True, cond=cond, cond_scale=2.0)[0]
    _assert_close("step_mean_cfg", mean_cfg, io, spec)


@pytest.mark.parametrize(("name", "cond_scale"), [("sample", 2.0), ("sample_scale1", 1.0)])
def test_ancestral_sampling_matches_the_seed(diffusion, io, spec, name, cond_scale):
    """Full 8-step sampling from the same global RNG state: same draws in the same order."""
    torch.manual_seed(spec["sample_seed"])
    video = diffusion.sample(cond=io["cond"], cond_scale=cond_scale, batch_size=2)
    assert video.shape == (2, 3, 4, 16, 16)
    assert video.min() >= 0 and video.max() <= 1  # x0 is clipped to [-1, 1] at every step
    _assert_close(name, video, io, spec)


@torch.no_grad()
def test_dropout_and_focus_probabilities_mean_what_they_say(diffusion, io):
    """null_cond_prob=1 is the learned null condition; prob_focus_present=1 is the all-True mask."""
    x, t, cond = io["x_noisy"], io["t"], io["cond"]
    unet = diffusion.denoise_fn
    null_cond = unet.null_cond_emb.expand_as(cond)
    torch.testing.assert_close(
        unet(x, t, cond=cond, null_cond_prob=1.0), unet(x, t, cond=null_cond), rtol=0, atol=0
    )
    assert not torch.allclose(unet(x, t, cond=cond), unet(x, t, cond=null_cond))
    focus = torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(
        unet(x, t, cond=cond, prob_focus_present=1.0),
        unet(x, t, cond=cond, focus_present_mask=focus),
        rtol=0,
        atol=0,
    )


def test_wrong_video_shapes_raise_clear_errors(diffusion, io):
    video, cond = io["video"], io["cond"]
    with pytest.raises(ValueError, match=r"F=4"):
        diffusion(video[:, :, :3], cond=cond)  # 3 frames, the model is built for 4
    with pytest.raises(ValueError, match=r"H=16"):
        diffusion(torch.nn.functional.pad(video, (0, 8, 0, 8)), cond=cond)  # 24² for 16²
    with pytest.raises(ValueError, match="divisible by 2"):
        diffusion.denoise_fn(torch.zeros(2, 3, 4, 15, 15), io["t"], cond=cond)  # one halving
    with pytest.raises(ValueError, match="pass cond"):
        diffusion.denoise_fn(io["x_noisy"], io["t"])


def test_linear_and_cosine_schedules(spec):
    linear = build_vdm(spec["unet"], {**spec["diffusion"], "timesteps": 1000, "beta_schedule": "linear"})
    assert linear.betas[0].item() == pytest.approx(1e-4) and linear.betas[-1].item() == pytest.approx(0.02)
    for model in (linear, build_vdm(spec["unet"], spec["diffusion"])):
        abar = model.alphas_cumprod
        assert (abar[1:] < abar[:-1]).all() and abar[0] < 1 and abar[-1] < 0.01
    with pytest.raises(ValueError, match="beta_schedule"):
        build_vdm(spec["unet"], {**spec["diffusion"], "beta_schedule": "quadratic"})
    with pytest.raises(TypeError, match="unknown arguments"):
        build_vdm({**spec["unet"], "resnet_groups": 8}, spec["diffusion"])


# ------------------------------------------------------------------ DDIM (vdm_ddim.py)


def test_ddim_eta1_over_every_step_is_the_seeds_ancestral_sampling(diffusion, io, spec):
    """With eta = 1 and steps == timesteps, DDIM's variance is the posterior variance and its
    mean (noise re-derived from the clipped x0) the posterior mean: the seed's own sample,
    noise draw for draw from the same global seed."""
    torch.manual_seed(spec["sample_seed"])
    video = diffusion.sample_ddim(cond=io["cond"], cond_scale=2.0, steps=diffusion.num_timesteps, eta=1.0)
    torch.testing.assert_close(video, io["sample"], rtol=0, atol=1e-4)


def test_ddim_eta0_in_fewer_steps_is_the_ddim_update(diffusion, io):
    """eta = 0, 4 of 8 steps: the trailing steps 7, 5, 3, 1, each the deterministic DDIM
    update written out by hand, the last one onto alpha_cumprod = 1 (the clipped x0)."""
    from divot_llm.detokenizers.vdm_ddim import ddim_scheduler

    assert ddim_scheduler(diffusion, 4).timesteps.tolist() == [7, 5, 3, 1]
    cond = io["cond"]
    video = diffusion.sample_ddim(
        cond=cond, cond_scale=2.0, steps=4, generator=torch.Generator().manual_seed(0)
    )

    abar = diffusion.alphas_cumprod
    x = torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t, t_prev in [(7, 5), (5, 3), (3, 1), (1, None)]:
            t_b = torch.full((x.shape[0],), t, dtype=torch.long)
            eps = diffusion.denoise_fn.forward_with_cond_scale(x, t_b, cond=cond, cond_scale=2.0)
            x0 = ((x - (1 - abar[t]).sqrt() * eps) / abar[t].sqrt()).clamp(-1, 1)
            eps = (x - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()
            a_prev = abar[t_prev] if t_prev is not None else torch.tensor(1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(video, (x + 1) * 0.5, rtol=0, atol=1e-5)
    assert video.min() >= 0 and video.max() <= 1


def test_ddim_scheduler_runs_on_the_models_own_schedule():
    """README config (1000 cosine steps): the scheduler's alphas_cumprod are the model's buffer
    bit for bit (diffusers' own float32 cumprod drifts by ~2e-4 relative at the tail), and 50
    steps start at the last timestep."""
    from divot_llm.detokenizers.vdm_ddim import ddim_scheduler

    with torch.device("meta"):
        meta_model = build_vdm({"dim": 8, "dim_mults": [1]}, {"image_size": 8, "num_frames": 2})
    model = GaussianDiffusion(meta_model.denoise_fn, image_size=8, num_frames=2, timesteps=1000)
    scheduler = ddim_scheduler(model, 50)
    assert torch.equal(scheduler.alphas_cumprod, model.alphas_cumprod)
    assert torch.equal(scheduler.betas, model.betas)
    assert scheduler.timesteps.tolist() == list(range(999, 0, -20))
    with pytest.raises(ValueError, match="DDIM steps must be in"):
        ddim_scheduler(model, 1001)


@pytest.mark.parametrize("objective", ["pred_noise", "pred_x0", "pred_v"])
def test_each_objective_turns_its_own_target_back_into_the_clean_clip(diffusion, objective):
    """x_t from (x0, noise); the UNet's ideal output under the objective (training_target)
    gives x0 again through predict_start, at every timestep."""
    model = GaussianDiffusion(
        diffusion.denoise_fn, image_size=8, num_frames=2, timesteps=8, objective=objective
    )
    gen = torch.Generator().manual_seed(3)
    x0 = torch.rand(8, 3, 2, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.arange(8)
    target = model.training_target(x0, t, noise)
    # epsilon divides by sqrt(abar) (~0.03 at the last of 8 cosine steps): float32 keeps ~1e-4
    atol = 5e-4 if objective == "pred_noise" else 1e-5
    torch.testing.assert_close(
        model.predict_start(model.q_sample(x0, t, noise), t, target), x0, rtol=0, atol=atol
    )
    if objective == "pred_v":  # v = sqrt(abar) eps - sqrt(1 - abar) x0, Salimans & Ho 2022
        abar = model.alphas_cumprod.view(-1, 1, 1, 1, 1)
        torch.testing.assert_close(target, abar.sqrt() * noise - (1 - abar).sqrt() * x0)


@pytest.mark.parametrize("objective", ["pred_x0", "pred_v"])
def test_ddim_reads_the_unets_output_by_objective(diffusion, io, objective):
    """DDIM eta = 0 in 4 steps (diffusers' prediction_type sample / v_prediction) is the
    update written out with x0 taken from the output as the objective says."""
    model = GaussianDiffusion(
        diffusion.denoise_fn, image_size=diffusion.image_size, num_frames=diffusion.num_frames,
        timesteps=diffusion.num_timesteps, objective=objective,
    )  # fmt: skip
    cond = io["cond"]
    video = model.sample_ddim(cond=cond, cond_scale=2.0, steps=4, generator=torch.Generator().manual_seed(0))
    abar = model.alphas_cumprod
    x = torch.randn(video.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t, t_prev in [(7, 5), (5, 3), (3, 1), (1, None)]:
            out = model.denoise_fn.forward_with_cond_scale(
                x, torch.full((x.shape[0],), t), cond=cond, cond_scale=2.0
            )
            x0 = out if objective == "pred_x0" else abar[t].sqrt() * x - (1 - abar[t]).sqrt() * out
            x0 = x0.clamp(-1, 1)
            eps = (x - abar[t].sqrt() * x0) / (1 - abar[t]).sqrt()
            a_prev = abar[t_prev] if t_prev is not None else torch.tensor(1.0)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(video, (x + 1) * 0.5, rtol=0, atol=1e-5)


def test_an_unknown_objective_is_refused(diffusion):
    with pytest.raises(ValueError, match="objective must be one of pred_noise, pred_x0, pred_v"):
        GaussianDiffusion(diffusion.denoise_fn, image_size=8, num_frames=2, objective="pred_eps")
