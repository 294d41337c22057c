"""Noise schedule, DDIM loop and guidance against independent re-computations of lvdm's
sampler (reference §4.2: ``make_beta_schedule``, ``rescale_zero_terminal_snr``,
``make_ddim_timesteps``, ``p_sample_ddim``, ``rescale_noise_cfg``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from divot_llm.config import compose_config
from divot_llm.detokenizers.dynamicrafter_config import DynamiCrafterConfig
from divot_llm.detokenizers.sampler import ddim_sample, guided_prediction, make_scheduler


@pytest.fixture(scope="module")
def divot_config() -> DynamiCrafterConfig:
    """conf/detokenizer/divot.yaml, composed (weights path filled in)."""
    return compose_config(["detokenizer=divot", "detokenizer.pretrained_path=/ckpt/stage2.bin"]).detokenizer


def reference_alphas_cumprod() -> np.ndarray:
    """lvdm: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2 in float64, then Lin et al.
    Alg. 1 (shift sqrt(alpha_bar) so the last is 0, rescale so the first is unchanged)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    sqrt_bar = np.sqrt(np.cumprod(1.0 - betas))
    first, last = sqrt_bar[0], sqrt_bar[-1]
    sqrt_bar = (sqrt_bar - last) * first / (first - last)
    return sqrt_bar**2


def test_divot_config_has_the_reference_sampler_settings(divot_config):
    cfg = divot_config
    assert (cfg.ddim_steps, cfg.ddim_eta, cfg.guidance_scale, cfg.guidance_rescale) == (50, 1.0, 7.5, 0.7)
    assert (cfg.frame_stride, cfg.num_frames, cfg.fps, cfg.image_size) == (3, 16, 8, 256)
    assert (cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps, cfg.timestep_spacing) == (
        0.00085,
        0.012,
        1000,
        "uniform",
    )


def test_schedule_betas_and_timesteps_are_the_reference_numbers(divot_config):
    scheduler = make_scheduler(divot_config)
    expected_bar = reference_alphas_cumprod()
    expected_betas = 1 - np.concatenate([expected_bar[:1], expected_bar[1:] / expected_bar[:-1]])

    # diffusers derives them in fp32 (lvdm in fp64, then casts): betas, being ratios of
    # nearby alpha_bar values, carry ~1e-4 relative rounding; alpha_bar itself is tight.
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), expected_bar, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(scheduler.betas.double().numpy(), expected_betas, rtol=5e-4, atol=1e-7)
    assert scheduler.betas[0].item() == pytest.approx(0.00085, rel=1e-4)  # first step unchanged
    # Zero terminal SNR: the last step is pure noise.
    assert scheduler.alphas_cumprod[-1].item() == 0.0 and scheduler.betas[-1].item() == 1.0
    # The step after the last uses alpha_bar[0] (lvdm's alphas_prev[0]), not 1.
    assert scheduler.final_alpha_cumprod.item() == pytest.approx(expected_bar[0], rel=1e-6)
    assert scheduler.config.prediction_type == "v_prediction" and not scheduler.config.clip_sample

    scheduler.set_timesteps(divot_config.ddim_steps)
    assert scheduler.timesteps.tolist() == list(range(981, 0, -20))  # lvdm 'uniform': range(0, 1000, 20) + 1


def test_uniform_trailing_spacing_matches_lvdm(divot_config):
    scheduler = make_scheduler(dataclasses.replace(divot_config, timestep_spacing="uniform_trailing"))
    scheduler.set_timesteps(50)
    lvdm = np.flip(np.round(np.arange(1000, 0, -20.0))).astype(np.int64) - 1  # make_ddim_timesteps
    assert scheduler.timesteps.tolist() == lvdm[::-1].tolist()
    with pytest.raises(ValueError, match="timestep_spacing"):
        make_scheduler(dataclasses.replace(divot_config, timestep_spacing="quad"))


def lvdm_ddim(predict, x_t: np.ndarray, noises: list[np.ndarray], steps: int, eta: float) -> np.ndarray:
    """lvdm ``DDIMSampler`` in float64 numpy: v-parameterisation, 'uniform' timesteps,
    sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))."""
    bar = reference_alphas_cumprod()
    timesteps = np.arange(0, 1000, 1000 // steps) + 1
    alphas = bar[timesteps]
    alphas_prev = np.concatenate([bar[:1], bar[timesteps[:-1]]])
    sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
    for index in reversed(range(steps)):
        t = timesteps[index]
        a_t, a_prev, sigma = alphas[index], alphas_prev[index], sigmas[index]
        v = predict(x_t, t)
        e_t = np.sqrt(a_t) * v + np.sqrt(1 - a_t) * x_t  # predict_eps_from_z_and_v
        x0 = np.sqrt(a_t) * x_t - np.sqrt(1 - a_t) * v  # predict_start_from_z_and_v
        x_t = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma**2) * e_t + sigma * noises.pop(0)
    return x_t


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_ddim_sample_matches_lvdm_sampler(divot_config, eta):
    shape, steps = (2, 4, 3, 2, 2), 10

    def predict_np(x, t):  # any smooth function of (x, t) exercises the update
        return np.tanh(0.7 * x) + 0.001 * t

    gen = torch.Generator().manual_seed(3)
    draws = [torch.randn(shape, generator=gen).double().numpy() for _ in range(steps + 1)]
    expected = lvdm_ddim(predict_np, draws[0], draws[1:] if eta > 0 else [0.0] * steps, steps, eta)

    actual = ddim_sample(
        lambda x, t: torch.tanh(0.7 * x) + 0.001 * t.float(),
        make_scheduler(divot_config),
        shape,
        steps,
        eta,
        torch.Generator().manual_seed(3),
        torch.device("cpu"),
        torch.float32,
    )
    np.testing.assert_allclose(actual.double().numpy(), expected, rtol=1e-4, atol=1e-4)


def test_guided_prediction_matches_diffusers_rescale_noise_cfg():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    cond, uncond = torch.randn(3, 4, 2, 5, 5), torch.randn(3, 4, 2, 5, 5)
    cfg = uncond + 7.5 * (cond - uncond)
    expected = rescale_noise_cfg(cfg, cond, guidance_rescale=0.7)
    torch.testing.assert_close(guided_prediction(cond, uncond, 7.5, 0.7), expected)
    torch.testing.assert_close(guided_prediction(cond, uncond, 7.5, 0.0), cfg)


def test_guidance_scale_one_is_the_conditional_prediction():
    cond, uncond = torch.randn(2, 4, 3, 4, 4), torch.randn(2, 4, 3, 4, 4)
    torch.testing.assert_close(guided_prediction(cond, uncond, 1.0, 0.7), cond)


def test_constant_prediction_is_kept_not_turned_into_nan():
    # A fresh UNet predicts exactly 0 (zero-initialised output layer): std 0 everywhere.
    zeros = torch.zeros(2, 4, 3, 4, 4)
    assert torch.equal(guided_prediction(zeros, zeros, 7.5, 0.7), zeros)
