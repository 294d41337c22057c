"""DDIM sampling (Song et al., "Denoising Diffusion Implicit Models") for ``GaussianDiffusion``.

The update is diffusers' ``DDIMScheduler.step``, set up on the model's own schedule: built from
``diffusion.betas`` and then handed the model's ``alphas_cumprod`` buffer itself, because
diffusers takes the cumulative product of float32 betas while the seed (and we) take it in
float64 and round once -- the two differ in the last bits, and a sampler should see exactly the
``alphas_cumprod`` the model was trained on.

Choices, and why:

- ``timestep_spacing="trailing"``: the first step is always ``T - 1``, where ``x_T`` is the
  pure noise the model saw in training (``leading`` would start at ``T - T // steps``); with
  ``steps == T`` every step ``T - 1 .. 0`` is visited, as in ancestral sampling.
- ``set_alpha_to_one=True``: the last step lands on the predicted x0, as the seed's ancestral
  step at ``t = 0`` does (its posterior mean there is the clipped x0).
- ``use_clipped_model_output=True``: the noise is re-derived from the clipped x0 (GLIDE). With
  it, ``eta=1`` and ``steps == T`` is exactly the seed's ancestral step (posterior mean and
  variance of ``q(x_{t-1} | x_t, x0)``), which the tests check against the seed's own samples.
- x0 clipping is the seed's: to [-1, 1], or, with ``use_dynamic_thres``, diffusers'
  ``thresholding`` at the same percentile with no upper bound (the seed has none).
- Noise comes from ``generator`` or, when it is ``None``, the global RNG, drawn in the seed's
  order: ``x_T`` first, then one draw per step when ``eta > 0``, so ``eta=1`` with
  ``steps == T`` reproduces ``GaussianDiffusion.sample`` draw for draw.
"""

from __future__ import annotations

from typing import Protocol

import torch
from diffusers import DDIMScheduler
from torch import nn

__all__ = ["DiffusionLike", "ddim_scheduler", "sample_ddim"]


class DiffusionLike(Protocol):
    """What DDIM reads of a ``GaussianDiffusion`` (ours; the seed's once given
    ``objective = "pred_noise"``, its only one). A protocol, not an import of ``vdm``:
    ``GaussianDiffusion.sample_ddim`` calls into this module."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    num_timesteps: int
    channels: int
    num_frames: int
    image_size: int
    use_dynamic_thres: bool
    dynamic_thres_percentile: float
    objective: str  # pred_noise | pred_x0 | pred_v: what denoise_fn predicts
    denoise_fn: nn.Module


# GaussianDiffusion.objective -> diffusers' name for it
PREDICTION_TYPES = {"pred_noise": "epsilon", "pred_x0": "sample", "pred_v": "v_prediction"}


def ddim_scheduler(diffusion: DiffusionLike, steps: int) -> DDIMScheduler:
    """A ``DDIMScheduler`` over ``diffusion``'s schedule with ``steps`` inference steps set."""
    if not 1 <= steps <= diffusion.num_timesteps:
        raise ValueError(
            f"DDIM steps must be in [1, {diffusion.num_timesteps}] (the model's timesteps), got {steps}"
        )
    betas_t = diffusion.betas.detach().to("cpu", torch.float32)
    scheduler = DDIMScheduler(
        num_train_timesteps=diffusion.num_timesteps,
        trained_betas=betas_t.numpy(),
        clip_sample=not diffusion.use_dynamic_thres,
        clip_sample_range=1.0,
        thresholding=diffusion.use_dynamic_thres,
        dynamic_thresholding_ratio=diffusion.dynamic_thres_percentile,
        sample_max_value=float("inf"),
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=PREDICTION_TYPES[diffusion.objective],
        timestep_spacing="trailing",
    )
    # the model's own float64-then-float32 cumulative product, not diffusers' float32 one
    scheduler.alphas_cumprod = diffusion.alphas_cumprod.detach().to("cpu", torch.float32).clone()
    scheduler.set_timesteps(steps)
    return scheduler


@torch.inference_mode()
def sample_ddim(
    diffusion: DiffusionLike,
    cond: torch.Tensor | None = None,
    cond_scale: float = 1.0,
    batch_size: int = 16,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    context: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(B, C, F, H, W)`` videos in [0, 1] after ``steps`` DDIM steps from pure noise.

    ``eta=0`` is deterministic given ``x_T``; ``eta=1`` with ``steps == timesteps`` is ancestral
    sampling. B is ``cond``'s batch when given, as in ``GaussianDiffusion.sample``. Noise is
    drawn on ``generator``'s device (the model's without one) and moved to the model's, so a
    CPU generator gives the same sample on any device. ``context``: ``(B, N, D)`` tokens for a
    ``Unet3D`` built with ``context_dim``."""
    if isinstance(cond, (list, tuple)):
        raise TypeError("cond must be a tensor: embed text with the configured text encoder first")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    scheduler = ddim_scheduler(diffusion, steps)
    device = diffusion.betas.device
    batch = cond.shape[0] if cond is not None else batch_size
    shape_bcfhw = (
        batch,
        diffusion.channels,
        diffusion.num_frames,
        diffusion.image_size,
        diffusion.image_size,
    )
    draw_device = generator.device if generator is not None else device
    memory = {} if context is None else {"context": context}

    def randn() -> torch.Tensor:
        draw = torch.randn(shape_bcfhw, generator=generator, device=draw_device)
        return draw.to(device=device, dtype=diffusion.betas.dtype)

    x_bcfhw = randn()
    for step in scheduler.timesteps.tolist():
        t_b = torch.full((batch,), step, device=device, dtype=torch.long)
        out_bcfhw = diffusion.denoise_fn.forward_with_cond_scale(
            x_bcfhw, t_b, cond=cond, cond_scale=cond_scale, **memory
        )
        noise = randn() if eta > 0 else None
        x_bcfhw = scheduler.step(
            out_bcfhw, step, x_bcfhw, eta=eta, use_clipped_model_output=True, variance_noise=noise
        ).prev_sample
    return (x_bcfhw + 1) * 0.5
