"""VidTok's training objective, split by the optimizer that follows each half.

``AutoencoderObjective`` (the autoencoder's optimizer: its weights and the NLL's
log-variance)::

    rec  = pixel_weight |x - x_rec| + perceptual_weight LPIPS(x, x_rec)     per frame
    nll  = sum(rec / exp(logvar) + logvar) / frames                          learnable logvar
    g    = softplus(-mean_patches D(x_rec))    (non-saturating; or -mean D(x_rec))
    loss = nll + disc_factor * w * g + kl_weight kl_loss + aux_weight aux_loss
    w    = disc_weight * clamp(|grad_last nll| / (|grad_last g| + 1e-4), 0, max_adaptive_weight)

where ``grad_last`` is the gradient at the decoder's last conv (``autoencoder.last_layer``)
and the regularizer's terms come from ``autoencoder.encode`` (KL of the posterior, or FSQ's
annealed entropy + commitment). The generator term calls the discriminator through its
current weights, detached: the discriminator's own optimizer never sees this gradient.

``DiscriminatorObjective`` (the discriminator's optimizer)::

    loss = disc_factor * (hinge(D(x), D(x_rec)) + lecam_weight * lecam)
    hinge = (mean relu(1 - real) + mean relu(1 + fake)) / 2
    lecam = mean relu(real - ema_fake)^2 + mean relu(ema_real - fake)^2

with the moving averages of the mean real and fake logits updated first (``lecam_decay``;
averaged over ranks so every rank holds the same values; kept as the module's extra state
in full precision, so they are in every checkpoint and a resume continues them exactly).

The GAN joins in at optimizer step ``disc_start`` (``gan_active``): before it the
generator term is left out and the discriminator is not updated. The 2D discriminator
judges frames one by one, the 3D one whole clips.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from divot_llm.config.schema import VidTokLossConfig

ADAPTIVE_EPS = 1e-4  # keeps the adaptive weight finite when the generator's gradient vanishes
REGULARIZER_TERMS = ("kl_loss", "aux_loss")  # what encode() may report, with its weight below


def frames_of(video_bcthw: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W)`` -> ``(B*T, C, H, W)``: each frame on its own."""
    return video_bcthw.transpose(1, 2).flatten(0, 1)


def gan_active(cfg: VidTokLossConfig, step: int) -> bool:
    """Whether optimizer step ``step`` (0-based) trains with the discriminator."""
    return cfg.disc_factor > 0 and step >= cfg.disc_start


def generator_loss(logits_fake: torch.Tensor, cross_entropy: bool) -> torch.Tensor:
    """Non-saturating (``-log sigmoid`` of each sample's mean logit), or ``-mean(logits)``."""
    if cross_entropy:
        per_sample = logits_fake.flatten(1).mean(dim=1)
        return F.softplus(-per_sample).mean()
    return -logits_fake.mean()


def hinge_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_weight(
    nll: torch.Tensor, g: torch.Tensor, last_layer: nn.Parameter, cfg: VidTokLossConfig
) -> torch.Tensor:
    """``disc_weight * |grad nll| / (|grad g| + eps)`` at ``last_layer``, clamped, detached:
    the GAN term's gradient scaled to the reconstruction's at the decoder's output."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g, last_layer, retain_graph=True)[0]
    ratio = nll_grad.norm() / (g_grad.norm() + ADAPTIVE_EPS)
    return ratio.clamp(0.0, cfg.max_adaptive_weight).detach() * cfg.disc_weight


class AutoencoderObjective(nn.Module):
    """The autoencoder's loss (see the module docstring); the module one engine trains.

    Args:
        autoencoder: a ``VidTokAutoencoder`` (``forward(x, sample, step) -> (x_rec, z,
            regularizer terms)``, ``last_layer``).
        discriminator: the ``DiscriminatorObjective``'s discriminator, held outside this
            module's tree (another engine trains it).
        cfg: the loss weights.
        perceptual: a frozen LPIPS (``(N, 3, H, W)`` pairs in [-1, 1] -> ``(N,)``), or None
            (``perceptual_weight`` must then be 0).
        sample: train on posterior samples (KL; the tokenizer config's ``sample``).
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        discriminator: nn.Module,
        cfg: VidTokLossConfig,
        perceptual: nn.Module | None = None,
        sample: bool = True,
    ):
        super().__init__()
        if cfg.perceptual_weight > 0 and perceptual is None:
            raise ValueError("perceptual_weight > 0 needs an LPIPS module")
        self.autoencoder = autoencoder
        self.cfg, self.sample = cfg, sample
        # (1,), not a scalar: DeepSpeed broadcasts parameters as bytes, which a 0-d tensor cannot be viewed as
        self.logvar = nn.Parameter(torch.full((1,), float(cfg.logvar_init)), requires_grad=cfg.learn_logvar)
        self.perceptual = perceptual.requires_grad_(False).eval() if perceptual is not None else None
        self._discriminator = (discriminator,)  # a tuple: not a submodule, not in this state dict

    def train(self, mode: bool = True) -> AutoencoderObjective:
        super().train(mode)
        if self.perceptual is not None:
            self.perceptual.eval()  # a fixed metric network
        return self

    def reconstruction(self, video_bcthw: torch.Tensor, recon_bcthw: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-pixel reconstruction terms of each frame: ``rec (B*T, 3, H, W)`` and the
        frames' LPIPS ``p_loss (B*T,)`` (zeros without a perceptual weight)."""
        real_n, fake_n = frames_of(video_bcthw), frames_of(recon_bcthw)
        rec = self.cfg.pixel_weight * (real_n - fake_n).abs()
        if self.cfg.perceptual_weight > 0:
            p_loss = self.perceptual(real_n, fake_n)
            rec = rec + self.cfg.perceptual_weight * p_loss.view(-1, 1, 1, 1)
        else:
            p_loss = rec.new_zeros(rec.shape[0])
        return {"rec": rec, "p_loss": p_loss}

    def forward(self, video_bcthw: torch.Tensor, step: int) -> dict[str, Any]:
        """The loss of one batch at optimizer step ``step`` (0-based), with its parts
        (detached scalars) and the reconstruction ``recon`` (for the discriminator)."""
        recon, _, reg_terms = self.autoencoder(video_bcthw, sample=self.sample, step=step)
        parts = self.reconstruction(video_bcthw, recon)
        rec = parts["rec"]
        logvar = self.logvar[0]
        nll = (rec / logvar.exp() + logvar).sum() / rec.shape[0]
        loss = nll
        g_loss = d_weight = nll.new_zeros(())
        if gan_active(self.cfg, step):
            logits_fake = self._discriminate(recon)
            g_loss = generator_loss(logits_fake, self.cfg.gen_loss_cross_entropy)
            if torch.is_grad_enabled():  # validation has no gradients to balance
                d_weight = adaptive_weight(nll, g_loss, self.autoencoder.last_layer, self.cfg)
            loss = loss + self.cfg.disc_factor * d_weight * g_loss
        weights = {"kl_loss": self.cfg.kl_weight, "aux_loss": self.cfg.aux_weight}
        reg = {name: reg_terms[name] for name in REGULARIZER_TERMS if name in reg_terms}
        for name, value in reg.items():
            loss = loss + weights[name] * value
        return {
            "loss": loss,
            "recon": recon,
            "nll_loss": nll.detach(),
            "rec_loss": rec.detach().mean(),
            "p_loss": parts["p_loss"].detach().mean(),
            "g_loss": g_loss.detach(),
            "d_weight": d_weight,
            "logvar": logvar.detach().clone(),
            **{name: value.detach() for name, value in reg.items()},
        }

    def _discriminate(self, recon_bcthw: torch.Tensor) -> torch.Tensor:
        """The discriminator's logits of the reconstruction through its current weights,
        detached (its batch-norm statistics move as in the seed's generator pass)."""
        (disc,) = self._discriminator
        detached = {name: p.detach() for name, p in disc.named_parameters()}
        inputs = frames_of(recon_bcthw) if disc.per_frame else recon_bcthw
        return functional_call(disc, detached, (inputs,), strict=False)


class DiscriminatorObjective(nn.Module):
    """The discriminator's hinge + LeCAM loss (module docstring); another engine's module."""

    def __init__(self, discriminator: nn.Module, cfg: VidTokLossConfig):
        super().__init__()
        self.discriminator = discriminator
        self.cfg = cfg
        self.lecam_real_ema = 0.0  # python floats: exact in any training dtype (extra state)
        self.lecam_fake_ema = 0.0

    def get_extra_state(self) -> dict[str, float]:
        return {"lecam_real_ema": self.lecam_real_ema, "lecam_fake_ema": self.lecam_fake_ema}

    def set_extra_state(self, state: dict[str, float]) -> None:
        self.lecam_real_ema = float(state["lecam_real_ema"])
        self.lecam_fake_ema = float(state["lecam_fake_ema"])

    def logits(self, video_bcthw: torch.Tensor) -> torch.Tensor:
        per_frame = self.discriminator.per_frame
        return self.discriminator(frames_of(video_bcthw) if per_frame else video_bcthw)

    def forward(self, video_bcthw: torch.Tensor, recon_bcthw: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss on real clips and (detached) reconstructions, with its parts."""
        logits_real = self.logits(video_bcthw.detach())
        logits_fake = self.logits(recon_bcthw.detach())
        hinge = hinge_loss(logits_real, logits_fake)
        loss = hinge
        lecam = hinge.new_zeros(())
        if self.cfg.lecam_weight > 0:
            self._update_lecam(logits_real, logits_fake)
            lecam = (
                F.relu(logits_real - self.lecam_fake_ema).pow(2).mean()
                + F.relu(self.lecam_real_ema - logits_fake).pow(2).mean()
            )
            loss = loss + self.cfg.lecam_weight * lecam
        return {
            "loss": self.cfg.disc_factor * loss,
            "hinge_loss": hinge.detach(),
            "lecam_loss": lecam.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }

    @torch.no_grad()
    def _update_lecam(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        means = torch.stack([logits_real.mean(), logits_fake.mean()]).double()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(means)  # the same averages on every rank
            means /= torch.distributed.get_world_size()
        real, fake = means.tolist()
        decay = self.cfg.lecam_decay
        self.lecam_real_ema = self.lecam_real_ema * decay + real * (1 - decay)
        self.lecam_fake_ema = self.lecam_fake_ema * decay + fake * (1 - decay)
