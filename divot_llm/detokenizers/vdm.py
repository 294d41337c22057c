"""Pixel-space video diffusion: ``Unet3D`` + ``GaussianDiffusion`` (Ho et al., "Video Diffusion
Models"), compatible with lucidrains' video-diffusion-pytorch 0.7.0.

Our own implementation. Constructor keyword names are the seed package's, and module names
and buffers are laid out so that the seed's ``GaussianDiffusion.state_dict()`` -- the
``model`` and ``ema`` entries of its ``Trainer`` checkpoints -- loads strictly
(``load_seed_checkpoint``). Outputs match the seed within float rounding for the same
weights, inputs and RNG state (``tests/detokenizers/test_vdm.py``, fixtures written by
``tools/vdm_fixtures.py``).

Value ranges follow the seed: ``GaussianDiffusion.forward`` takes videos in [0, 1] and maps
them to [-1, 1]; ``p_losses``, ``q_sample`` and ``p_mean_variance`` work in [-1, 1];
``sample`` returns [0, 1]. Videos are ``(B, C, F, H, W)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.detokenizers.vdm_unet import Unet3D

__all__ = [
    "DiffusionConfig",
    "GaussianDiffusion",
    "Unet3D",
    "Unet3DConfig",
    "build_vdm",
    "load_seed_checkpoint",
]

SEED_CHECKPOINT_KEYS = frozenset({"step", "model", "ema", "scaler"})


# ------------------------------------------------------------------ noise schedules


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule, float64, betas clipped to [0, 0.9999]."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / timesteps) + s) / (1 + s) * torch.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return (1 - alphas_cumprod[1:] / alphas_cumprod[:-1]).clip(0, 0.9999)


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """DDPM's linear schedule, rescaled so any step count spans the same noise range as 1000."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


BETA_SCHEDULES = {"cosine": cosine_beta_schedule, "linear": linear_beta_schedule}
OBJECTIVES = ("pred_noise", "pred_x0", "pred_v")  # what the UNet predicts (GaussianDiffusion)


def _at(values_t: torch.Tensor, t_b: torch.Tensor, ndim: int) -> torch.Tensor:
    """``values[t]`` shaped ``(B, 1, ..., 1)`` to broadcast against an ``ndim`` tensor."""
    return values_t.gather(-1, t_b).view(-1, *([1] * (ndim - 1)))


class GaussianDiffusion(nn.Module):
    """DDPM around a ``Unet3D`` (``denoise_fn``), the seed's schedule buffers.

    ``beta_schedule`` (``cosine``, the seed's only one, or ``linear``) and ``objective`` are
    our additions; every other argument is the seed's. ``use_dynamic_thres`` clips x0 at the
    ``dynamic_thres_percentile`` quantile of |x0| instead of 1 (Imagen).

    ``objective`` is what the UNet predicts: ``pred_noise`` (the seed's epsilon), ``pred_x0``
    (the clean clip) or ``pred_v`` (``sqrt(abar) eps - sqrt(1 - abar) x0``, Salimans & Ho
    2022). The sampler turns any of them into x0 (``predict_start``), so everything after
    that is shared. On flat synthetic clips x0 and v get the colours right in a few hundred
    CPU steps where epsilon still samples grey noise (docs/detokenizer.md).
    """

    def __init__(
        self,
        denoise_fn: Unet3D,
        *,
        image_size: int,
        num_frames: int,
        text_use_bert_cls: bool = False,
        channels: int = 3,
        timesteps: int = 1000,
        loss_type: str = "l1",
        use_dynamic_thres: bool = False,
        dynamic_thres_percentile: float = 0.9,
        beta_schedule: str = "cosine",
        objective: str = "pred_noise",
    ) -> None:
        super().__init__()
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got {loss_type!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {sorted(BETA_SCHEDULES)}, got {beta_schedule!r}")
        self.channels = channels
        self.image_size = image_size
        self.num_frames = num_frames
        self.denoise_fn = denoise_fn
        self.loss_type = loss_type
        self.objective = objective
        self.text_use_bert_cls = text_use_bert_cls
        self.use_dynamic_thres = use_dynamic_thres
        self.dynamic_thres_percentile = dynamic_thres_percentile

        # computed in float64, stored in float32 (as the seed's buffers)
        betas = BETA_SCHEDULES[beta_schedule](timesteps)
        self.num_timesteps = int(betas.shape[0])
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        buffers = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - alphas_cumprod).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / alphas_cumprod).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / alphas_cumprod - 1).sqrt(),
            "posterior_variance": posterior_variance,
            # the posterior variance is 0 at t = 0: clip before the log
            "posterior_log_variance_clipped": posterior_variance.clamp(min=1e-20).log(),
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * alphas.sqrt() / (1.0 - alphas_cumprod),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.float32))

    # ---------------------------------------------------------------- forward process

    def q_sample(
        self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (x_0 in [-1, 1])."""
        if noise is None:
            noise = torch.randn_like(x_start)
        return (
            _at(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
            + _at(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise
        )

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        mean = _at(self.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
        return (
            mean,
            _at(1.0 - self.alphas_cumprod, t, x_start.ndim),
            _at(self.log_one_minus_alphas_cumprod, t, x_start.ndim),
        )

    def predict_start_from_noise(
        self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        return (
            _at(self.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - _at(self.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * noise
        )

    def predict_start(self, x_t: torch.Tensor, t: torch.Tensor, model_out: torch.Tensor) -> torch.Tensor:
        """x0 from the UNet's output under ``objective``."""
        if self.objective == "pred_x0":
            return model_out
        if self.objective == "pred_v":  # x0 = sqrt(abar) x_t - sqrt(1 - abar) v
            return (
                _at(self.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
                - _at(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * model_out
            )
        return self.predict_start_from_noise(x_t, t, model_out)

    def training_target(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to output under ``objective``."""
        if self.objective == "pred_x0":
            return x_start
        if self.objective == "pred_v":
            return (
                _at(self.sqrt_alphas_cumprod, t, x_start.ndim) * noise
                - _at(self.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * x_start
            )
        return noise

    def q_posterior(
        self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Mean, variance and clipped log variance of ``q(x_{t-1} | x_t, x_0)``."""
        mean = (
            _at(self.posterior_mean_coef1, t, x_t.ndim) * x_start
            + _at(self.posterior_mean_coef2, t, x_t.ndim) * x_t
        )
        return (
            mean,
            _at(self.posterior_variance, t, x_t.ndim),
            _at(self.posterior_log_variance_clipped, t, x_t.ndim),
        )

    # ---------------------------------------------------------------- reverse process

    def p_mean_variance(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool,
        cond: torch.Tensor | None = None,
        cond_scale: float = 1.0,
    ) -> tuple[torch.Tensor, ...]:
        """``p(x_{t-1} | x_t)`` from the guided prediction: mean, variance, log variance."""
        out = self.denoise_fn.forward_with_cond_scale(x, t, cond=cond, cond_scale=cond_scale)
        x_recon = self.predict_start(x, t, out)
        if clip_denoised:
            limit: torch.Tensor | float = 1.0
            if self.use_dynamic_thres:
                limit = torch.quantile(x_recon.flatten(1).abs(), self.dynamic_thres_percentile, dim=-1)
                limit = limit.clamp(min=1.0).view(-1, *([1] * (x_recon.ndim - 1)))
            x_recon = x_recon.clamp(-limit, limit) / limit
        return self.q_posterior(x_recon, x, t)

    @torch.inference_mode()
    def p_sample(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_scale: float = 1.0,
        clip_denoised: bool = True,
    ) -> torch.Tensor:
        """One ancestral step. Noise is always drawn (and zeroed at t = 0), as in the seed, so
        the RNG stream matches its samples."""
        mean, _, log_var = self.p_mean_variance(
            x, t, clip_denoised=clip_denoised, cond=cond, cond_scale=cond_scale
        )
        noise = torch.randn_like(x)
        nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return mean + nonzero * (0.5 * log_var).exp() * noise

    @torch.inference_mode()
    def p_sample_loop(
        self, shape: Sequence[int], cond: torch.Tensor | None = None, cond_scale: float = 1.0
    ) -> torch.Tensor:
        """Ancestral sampling over every step from pure noise; returns [0, 1]."""
        device = self.betas.device
        x = torch.randn(tuple(shape), device=device)
        for step in reversed(range(self.num_timesteps)):
            t_b = torch.full((shape[0],), step, device=device, dtype=torch.long)
            x = self.p_sample(x, t_b, cond=cond, cond_scale=cond_scale)
        return (x + 1) * 0.5

    @torch.inference_mode()
    def sample(
        self, cond: torch.Tensor | None = None, cond_scale: float = 1.0, batch_size: int = 16
    ) -> torch.Tensor:
        """``(B, C, F, H, W)`` videos in [0, 1]; B is ``cond``'s batch when given."""
        if isinstance(cond, (list, tuple)):
            raise TypeError("cond must be a tensor: embed text with the configured text encoder first")
        batch = cond.shape[0] if cond is not None else batch_size
        shape = (batch, self.channels, self.num_frames, self.image_size, self.image_size)
        return self.p_sample_loop(shape, cond=cond, cond_scale=cond_scale)

    @torch.inference_mode()
    def sample_ddim(
        self,
        cond: torch.Tensor | None = None,
        cond_scale: float = 1.0,
        batch_size: int = 16,
        steps: int = 50,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sample`` in ``steps`` DDIM steps (diffusers' scheduler on this schedule; see
        ``vdm_ddim``); [0, 1]. ``context``: the UNet's cross-attention tokens, if it has any."""
        # imported here: diffusers is slow to import and only sampling needs it
        from divot_llm.detokenizers.vdm_ddim import sample_ddim

        return sample_ddim(
            self,
            cond,
            cond_scale=cond_scale,
            batch_size=batch_size,
            steps=steps,
            eta=eta,
            generator=generator,
            context=context,
        )

    @torch.inference_mode()
    def interpolate(
        self,
        x1: torch.Tensor,
        x2: torch.Tensor,
        t: int | None = None,
        lam: float = 0.5,
        cond: torch.Tensor | None = None,
        cond_scale: float = 1.0,
    ) -> torch.Tensor:
        """Noise two [-1, 1] videos to step ``t`` (last by default), mix them ``(1-lam):lam`` and
        denoise back to step 0. Returns [-1, 1], as the seed does. ``cond`` is our addition:
        the seed's version cannot run a conditional model."""
        if x1.shape != x2.shape:
            raise ValueError(
                f"interpolate needs two videos of one shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        t = self.num_timesteps - 1 if t is None else t
        batch, device = x1.shape[0], x1.device
        t_b = torch.full((batch,), t, device=device, dtype=torch.long)
        x = (1 - lam) * self.q_sample(x1, t_b) + lam * self.q_sample(x2, t_b)
        for step in reversed(range(t)):
            t_b = torch.full((batch,), step, device=device, dtype=torch.long)
            x = self.p_sample(x, t_b, cond=cond, cond_scale=cond_scale)
        return x

    # ---------------------------------------------------------------- training

    def p_losses(
        self,
        x_start: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """L1/L2 between the UNet's output and its ``training_target`` (the drawn noise for
        ``pred_noise``); ``x_start`` in [-1, 1]. ``kwargs`` reach the UNet:
        ``null_cond_prob``, ``prob_focus_present``, ``focus_present_mask``."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_noisy = self.q_sample(x_start, t, noise)
        if isinstance(cond, (list, tuple)):
            raise TypeError("cond must be a tensor: embed text with the configured text encoder first")
        out = self.denoise_fn(x_noisy, t, cond=cond, **kwargs)
        target = self.training_target(x_start, t, noise)
        return F.l1_loss(target, out) if self.loss_type == "l1" else F.mse_loss(target, out)

    def check_video(self, x: torch.Tensor) -> None:
        expected = (self.channels, self.num_frames, self.image_size, self.image_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected videos (B, C={self.channels}, F={self.num_frames}, H={self.image_size}, "
                f"W={self.image_size}), got {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Training loss of a batch of [0, 1] videos at random steps."""
        self.check_video(x)
        t = torch.randint(0, self.num_timesteps, (x.shape[0],), device=x.device).long()
        return self.p_losses(x * 2 - 1, t, *args, **kwargs)


# ------------------------------------------------------------------ configs and checkpoints


@dataclasses.dataclass(frozen=True)
class Unet3DConfig:
    """``Unet3D``'s constructor arguments, the seed's names."""

    dim: int
    cond_dim: int | None = None
    out_dim: int | None = None
    dim_mults: tuple[int, ...] = (1, 2, 4, 8)
    channels: int = 3
    attn_heads: int = 8
    attn_dim_head: int = 32
    use_bert_text_cond: bool = False
    init_dim: int | None = None
    init_kernel_size: int = 7
    use_sparse_linear_attn: bool = True
    block_type: str = "resnet"


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """``GaussianDiffusion``'s constructor arguments except ``denoise_fn``, the seed's names."""

    image_size: int
    num_frames: int
    text_use_bert_cls: bool = False
    channels: int = 3
    timesteps: int = 1000
    loss_type: str = "l1"
    use_dynamic_thres: bool = False
    dynamic_thres_percentile: float = 0.9
    beta_schedule: str = "cosine"
    objective: str = "pred_noise"


def _config(cls: type, kwargs: Mapping[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown arguments {unknown}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if k == "dim_mults" else v for k, v in kwargs.items()})


def build_vdm(
    unet: Mapping[str, Any] | Unet3DConfig, diffusion: Mapping[str, Any] | DiffusionConfig
) -> GaussianDiffusion:
    """``GaussianDiffusion(Unet3D(**unet), **diffusion)`` from dicts (e.g. a JSON of the seed's
    keyword arguments) or typed configs."""
    unet_cfg = unet if isinstance(unet, Unet3DConfig) else _config(Unet3DConfig, unet)
    diff_cfg = diffusion if isinstance(diffusion, DiffusionConfig) else _config(DiffusionConfig, diffusion)
    return GaussianDiffusion(Unet3D(**dataclasses.asdict(unet_cfg)), **dataclasses.asdict(diff_cfg))


def load_seed_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a video-diffusion-pytorch ``Trainer`` checkpoint ``{'step', 'model', 'ema', 'scaler'}``
    (``model``/``ema``: ``GaussianDiffusion`` state dicts) without unpickling code."""
    data = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not SEED_CHECKPOINT_KEYS <= set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(
            f"{path}: not a video-diffusion-pytorch Trainer checkpoint: expected a dict with keys "
            f"{sorted(SEED_CHECKPOINT_KEYS)}, found {found}"
        )
    for name in ("model", "ema"):
        if not isinstance(data[name], Mapping) or not any(k.startswith("denoise_fn.") for k in data[name]):
            raise ValueError(
                f"{path}: '{name}' is not a GaussianDiffusion state dict (no 'denoise_fn.*' keys)"
            )
    return data
