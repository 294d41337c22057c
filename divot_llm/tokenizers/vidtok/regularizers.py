"""The two VidTok bottlenecks: a diagonal Gaussian (KL) and finite scalar quantization
(FSQ), with the training losses each adds (seed-systems §a.1).

Neither holds a persistent tensor, so the autoencoder's state dict is encoder + decoder
only, as in the released checkpoints.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from divot_llm.tokenizers.vidtok.config import VidTokConfig


class GaussianRegularizer(nn.Module):
    """Splits the encoder output into mean and log-variance (channels), returns the mode
    or a reparameterised sample, and the KL divergence to N(0, I)."""

    def forward(
        self, moments_bcthw: torch.Tensor, sample: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mean, logvar = moments_bcthw.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        std = torch.exp(0.5 * logvar)
        z = mean + std * torch.randn_like(mean) if sample else mean
        # summed over latent elements, averaged over the batch (as VidTok weighs it)
        kl_loss = 0.5 * (mean.pow(2) + std.pow(2) - 1.0 - logvar).sum() / mean.shape[0]
        return z, {"kl_loss": kl_loss}


class FSQRegularizer(nn.Module):
    """Finite scalar quantization of every latent channel to ``levels[i]`` values.

    Code <-> index conversion is ``vector_quantize_pytorch.FSQ`` (bit-identical to
    VidTok's quantizer: the first channel is the least significant digit; codes per
    channel run from -1 to 1 - 2/L for even L). Training adds VidTok's auxiliary loss: an
    entropy term (per-position entropy minus ``diversity_gamma`` times the entropy of the
    batch's average code distribution, with soft assignments at inverse temperature
    ``entropy_inv_temperature``), weighted by a linear ramp from ``factor * weight`` down
    to ``weight`` over ``annealing_steps``, plus the commitment MSE.
    """

    def __init__(self, config: VidTokConfig) -> None:
        super().__init__()
        # imported here: it pulls in einx (seconds), which only FSQ models need
        from vector_quantize_pytorch import FSQ

        # its code tables are built on the CPU even under a meta default device (a model
        # built on meta to check key tables): they are derived, not loaded
        with torch.device("cpu"):
            self.fsq = FSQ(levels=list(config.fsq_levels))
        self.entropy_loss_weight = config.entropy_loss_weight
        self.annealing_steps = config.entropy_loss_annealing_steps
        self.annealing_factor = config.entropy_loss_annealing_factor
        self.commitment_loss_weight = config.commitment_loss_weight
        self.inv_temperature = config.entropy_inv_temperature
        self.diversity_gamma = config.diversity_gamma

    @property
    def codebook_size(self) -> int:
        return int(self.fsq.codebook_size)

    def forward(self, z_bcthw: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        codes_bcthw, indices_bthw = self.fsq(z_bcthw)
        log = {"indices": indices_bthw.long()}
        if torch.is_grad_enabled() and (self.entropy_loss_weight > 0 or self.commitment_loss_weight > 0):
            log["aux_loss"] = self.aux_loss(z_bcthw, codes_bcthw, step)
        return codes_bcthw, log

    def entropy_weight(self, step: int) -> float:
        """The entropy term's weight at training step ``step`` (linear annealing)."""
        if step >= self.annealing_steps:
            return self.entropy_loss_weight
        start = self.annealing_factor * self.entropy_loss_weight
        return start - (step / self.annealing_steps) * (start - self.entropy_loss_weight)

    def aux_loss(self, z_bcthw: torch.Tensor, codes_bcthw: torch.Tensor, step: int) -> torch.Tensor:
        z_nd = z_bcthw.float().movedim(1, -1).flatten(0, -2)
        codebook_kd = self.fsq.implicit_codebook.float()
        # VidTok's soft assignment: softmax over codes of 2 z.code / temperature (the
        # squared distance without its |code|^2 term, which it leaves out)
        logits_nk = 2 * self.inv_temperature * (z_nd @ codebook_kd.T)
        prob_nk = logits_nk.softmax(dim=-1)
        position_entropy = _entropy(prob_nk).mean()
        avg_prob_k = _global_mean(prob_nk.mean(dim=0))
        codebook_entropy = _entropy(avg_prob_k)
        entropy_loss = position_entropy - self.diversity_gamma * codebook_entropy
        commitment = F.mse_loss(z_bcthw.float(), codes_bcthw.detach().float())
        return entropy_loss * self.entropy_weight(step) + commitment * self.commitment_loss_weight

    def indices_to_codes(self, indices_bthw: torch.Tensor) -> torch.Tensor:
        """``(B, T', h, w)`` indices -> ``(B, C, T', h, w)`` codes."""
        return self.fsq.indices_to_codes(indices_bthw)


def _entropy(prob: torch.Tensor) -> torch.Tensor:
    return -(prob * prob.clamp(min=1e-5).log()).sum(dim=-1)


def _global_mean(local: torch.Tensor) -> torch.Tensor:
    """The mean of ``local`` over data-parallel ranks, with the local gradient scaled by
    1 / world size (what VidTok's in-place all-reduce does)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return local
    world = dist.get_world_size()
    total = local.detach().clone()
    dist.all_reduce(total)
    return local / world + (total / world - local / world).detach()
