"""Noise schedule, classifier-free guidance and the DDIM loop of the de-tokenizer (reference §4.2).

The schedule is diffusers' ``DDIMScheduler`` set up to reproduce lvdm's sampler exactly:

* betas ``linspace(sqrt(0.00085), sqrt(0.012), 1000)^2`` ("scaled_linear"), rescaled to
  zero terminal SNR (Lin et al. 2023, Alg. 1), v-prediction, no x0 clipping;
* lvdm's ``uniform`` spacing is diffusers' ``leading`` with ``steps_offset=1`` (50 steps:
  981, 961, ..., 1) and ``uniform_trailing`` is ``trailing`` (999, 979, ..., 19);
* the step after the last one uses ``alphas_cumprod[0]``, not 1 (``set_alpha_to_one=False``).

Not reproduced: lvdm casts ``alphas_cumprod`` to fp16 before building its DDIM tables; this
keeps fp32 (a < 1e-3 relative difference per step, reference §12 item 11).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

from divot_llm.detokenizers.dynamicrafter_config import DynamiCrafterConfig

# lvdm timestep spacing -> (diffusers timestep_spacing, steps_offset)
SPACINGS = {"uniform": ("leading", 1), "uniform_trailing": ("trailing", 0)}


def make_scheduler(config: DynamiCrafterConfig) -> DDIMScheduler:
    """The de-tokenizer's DDIM scheduler (also used for ``add_noise``/``get_velocity`` in training).

    Raises:
        ValueError: unknown ``timestep_spacing``.
    """
    if config.timestep_spacing not in SPACINGS:
        raise ValueError(
            f"timestep_spacing must be one of {sorted(SPACINGS)}, got {config.timestep_spacing!r}"
        )
    spacing, offset = SPACINGS[config.timestep_spacing]
    # The schedule tables are tiny CPU tensors, even when the model is built on "meta".
    with torch.device("cpu"):
        return DDIMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=offset,
            prediction_type="v_prediction",
            timestep_spacing=spacing,
            rescale_betas_zero_snr=True,
        )


def guided_prediction(cond: torch.Tensor, uncond: torch.Tensor, scale: float, rescale: float) -> torch.Tensor:
    """Classifier-free guidance with std rescaling (Lin et al. 2023, §3.4; lvdm ``rescale_noise_cfg``).

    ``out = uncond + scale * (cond - uncond)``, then, with ``rescale > 0``, the result is
    pulled towards a copy of itself whose per-sample std matches ``cond``'s:
    ``rescale * out * std(cond) / std(out) + (1 - rescale) * out``. Large guidance scales
    otherwise over-saturate v-prediction samples.

    Args:
        cond: conditional prediction ``(B, ...)``.
        uncond: unconditional prediction, same shape.
        scale: guidance scale (1 gives ``cond``).
        rescale: guidance rescale factor phi in [0, 1].
    """
    guided = uncond + scale * (cond - uncond)
    if rescale > 0:
        dims = list(range(1, cond.ndim))
        std_guided = guided.std(dim=dims, keepdim=True)
        # An all-constant prediction (e.g. a fresh UNet, whose output layer is zero) has no
        # std to match: keep it as is rather than dividing by zero.
        ratio = torch.where(std_guided > 0, cond.std(dim=dims, keepdim=True) / std_guided, 1.0)
        matched = guided * ratio
        guided = rescale * matched + (1 - rescale) * guided
    return guided


def ddim_sample(
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: DDIMScheduler,
    shape: tuple[int, ...],
    steps: int,
    eta: float,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Run DDIM from pure noise.

    All noise (the start and eta's per-step noise) is drawn on the CPU from ``generator``
    and then moved, so a seed gives the same sample on any device.

    Args:
        predict: ``(x_t, t) -> v`` (guidance already applied).
        scheduler: a ``make_scheduler`` scheduler; its timesteps are reset here.
        shape: latent shape ``(B, C, T, h, w)``.
        steps: DDIM steps.
        eta: DDIM eta (1.0: the reference's fully stochastic sampler).
        generator: CPU generator for every random draw.
        device: where the latents live.
        dtype: latent dtype.

    Returns:
        Final latents, ``shape``.
    """
    scheduler.set_timesteps(steps)

    def noise() -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)

    x_t = noise() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        v = predict(x_t, t.to(device))
        step_noise = noise() if eta > 0 else None
        x_t = scheduler.step(v, t, x_t, eta=eta, variance_noise=step_noise).prev_sample
    return x_t
