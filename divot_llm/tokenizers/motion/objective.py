"""Training objective of a motion tokenizer (``stage=motion_tokenizer``): the MSE of the
reconstructed motion field plus the vector-quantisation terms, with an EMA codebook.

Upstream released no training code; its maintainer says the tokenizer was trained with an
MSE reconstruction "like VQ-VAE" (docs/seed-systems.md b.1, b.3), and its builder keeps a
``quantize_kmeans_init`` switch, the mark of BEiT-v2's normalised EMA quantizer. So:

* **Reconstruction**: ``|x_rec - x|^2`` over the field, plus ``beta |z - sg(e)|^2`` (the
  commitment term pulling the L2-normalised latent ``z`` towards its code ``e``); the
  decoder sees ``z + sg(e - z)`` (straight-through).
* **Codebook by EMA** (``EmaCodebook``), not by gradient: per step, the assignment counts
  and the sums of the latents assigned to each code are summed over ranks
  (``torch.distributed``, when a group is up) and folded into moving averages; each code
  is the L2-normalised direction of its latent sum (the spherical k-means update, done a
  little each step). Every rank sees the same sums, so every rank keeps the same codebook.
  EMA updates are stable at small batches and need no codebook learning rate.
* **The codebook is a buffer while training**: the tokenizer's ``quantize.embedding.weight``
  is turned from a parameter into a buffer of the same name. The optimizer must never own
  it (DeepSpeed ZeRO keeps fp32 master copies of trainable parameters and would write them
  back over our edits), and our checkpoints leave frozen parameters out
  (``exclude_frozen_parameters``), so a frozen parameter would come back from ``train.seed``
  on resume; buffers are saved with the module's state and restored, and keep fp32 under
  bf16 training. The state-dict key is unchanged, so the tokenizer's own loading reads it.
* **Dead-code restarts**: a code whose moving average of assignments per step falls below
  ``restart_threshold`` x the uniform share restarts at a latent of the batch (rank 0's,
  broadcast, picked by a generator seeded from the seed and the update count: identical
  on every rank and again after a resume). Counts start at zero, so the first step
  restarts every code the batch barely uses: a data-dependent initialisation.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from divot_llm.config.schema import MotionVQConfig


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def code_histogram(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Assignments per code ``(K,)`` float32 of any-shaped integer codes."""
    return torch.bincount(codes.flatten(), minlength=codebook_size).float()


def perplexity(counts_k: torch.Tensor) -> torch.Tensor:
    """``exp(entropy)`` of a code histogram: the number of equally used codes with the
    same spread (1: one code; K: all codes alike)."""
    p_k = counts_k / counts_k.sum().clamp(min=1)
    return torch.exp(-(p_k * torch.log(p_k.clamp(min=1e-12))).sum())


class EmaCodebook(nn.Module):
    """The moving averages behind a codebook it is handed (``update``), as buffers:
    ``cluster_size (K,)`` (assignments per step, over ranks), ``embed_sum (K, D)`` (the
    sums of the latents assigned), ``updates`` (steps folded in; it seeds the restarts)."""

    def __init__(self, codebook_kd: torch.Tensor, cfg: MotionVQConfig, seed: int):
        super().__init__()
        self.decay, self.threshold, self.seed = cfg.ema_decay, cfg.restart_threshold, seed
        size, dim = codebook_kd.shape
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_sum", codebook_kd.detach().float().clone())  # weight 1: the start
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))

    @torch.no_grad()
    def update(
        self, codebook_kd: torch.Tensor, z_nd: torch.Tensor, codes_n: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Fold one step's assignments into the averages and rewrite ``codebook_kd`` in place
        (collective when a process group is up: every rank calls it with its own batch).

        Args:
            codebook_kd: The codebook (a buffer), unit rows.
            z_nd: This rank's L2-normalised latents.
            codes_n: Their codes.

        Returns:
            ``counts`` (K,): the step's assignments over all ranks; ``restarts``: codes restarted.
        """
        size = codebook_kd.shape[0]
        # counts | latent sums, summed over ranks in one all-reduce
        stats = torch.zeros(size, 1 + z_nd.shape[1], device=z_nd.device)
        stats[:, 0] = code_histogram(codes_n, size)
        stats[:, 1:].index_add_(0, codes_n, z_nd.float())
        if _distributed():
            dist.all_reduce(stats)
        counts_k, sums_kd = stats[:, 0], stats[:, 1:]
        if not bool(torch.isfinite(sums_kd).all()):
            # a non-finite latent on some rank (the all-reduce carries it to every rank): the
            # trainer skips this micro-batch, and the codebook stays as it was on all ranks
            return {"counts": counts_k, "restarts": z_nd.new_zeros((), dtype=torch.float32)}
        self.cluster_size.mul_(self.decay).add_(counts_k, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums_kd, alpha=1 - self.decay)
        self.updates += 1
        # a code's direction is its sum's; a sum decayed to nothing (a long-unused code with
        # restarts off) keeps the code where it was rather than become a zero vector
        norm_k1 = self.embed_sum.norm(dim=1, keepdim=True)
        moved_kd = self.embed_sum / norm_k1.clamp(min=1e-30)
        codebook_kd.copy_(torch.where(norm_k1 > 1e-30, moved_kd, codebook_kd.float()).to(codebook_kd.dtype))
        restarts = self._restart(codebook_kd, z_nd, counts_k)
        return {"counts": counts_k, "restarts": torch.tensor(float(restarts), device=z_nd.device)}

    def _restart(self, codebook_kd: torch.Tensor, z_nd: torch.Tensor, counts_k: torch.Tensor) -> int:
        """Restart the codes below the threshold at latents of rank 0's batch; returns how
        many. The decision reads only all-reduced values, so every rank takes it alike."""
        if self.threshold <= 0:
            return 0
        share = counts_k.sum() / counts_k.numel()  # assignments per code if use were uniform
        dead_k = self.cluster_size < self.threshold * share
        count = int(dead_k.sum())
        if count == 0:
            return 0
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.updates))
        rows = z_nd.shape[0]
        pick = (
            torch.randperm(rows, generator=gen)[:count]
            if count <= rows
            else torch.randint(rows, (count,), generator=gen)
        )
        fresh_nd = F.normalize(z_nd[pick.to(z_nd.device)].float(), dim=1)
        if _distributed():
            dist.broadcast(fresh_nd, src=0)  # rank 0's latents (every rank drew the same rows count)
        codebook_kd[dead_k] = fresh_nd.to(codebook_kd.dtype)
        # a restarted code starts at the threshold: one that the next batches leave unused
        # restarts again at once (unused codes cost nothing, so they keep trying latents)
        floor = self.threshold * share
        self.cluster_size[dead_k] = floor
        self.embed_sum[dead_k] = fresh_nd * floor
        return count


class MotionTokenizerObjective(nn.Module):
    """A motion tokenizer and its EMA codebook state as one trainable module (module
    docstring): ``forward(motion (B, 2, F, H, W))`` -> the loss and its parts.

    Args:
        tokenizer: A motion tokenizer with ``encode_latents`` (L2-normalised latents),
            ``quantize_latents``, ``decode_latents`` and ``codebook`` (an ``nn.Embedding``).
            Its codebook becomes a buffer (rows L2-normalised) and every other weight trainable.
        cfg: ``stage.motion_vq``.
        seed: Seeds the restarts' draws (``train.seed``).
    """

    def __init__(self, tokenizer: nn.Module, cfg: MotionVQConfig, seed: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.commitment_weight = cfg.commitment_weight
        tokenizer.requires_grad_(True)
        embedding = tokenizer.codebook
        weight_kd = F.normalize(embedding.weight.detach().float(), dim=1).to(embedding.weight.dtype)
        del embedding.weight  # the parameter goes; a buffer of the same name (same state-dict key) comes
        embedding.register_buffer("weight", weight_kd)
        self.ema = EmaCodebook(weight_kd, cfg, seed)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook buffer ``(K, D)``."""
        return self.tokenizer.codebook.weight

    def forward(self, motion: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms of fields ``(B, 2, F, H, W)``; in training mode the codebook moves.

        Returns:
            ``loss`` (backpropagated), ``mse``, ``commit_loss``, ``perplexity`` and ``usage``
            (of the step's codes, over all ranks when training), ``restarts``, ``recon``
            (B, 2, F, H, W), ``codes`` (B, N).
        """
        z_bnd = self.tokenizer.encode_latents(motion)
        # the look-up in fp32 against the fp32 codebook buffer, whatever the weights' dtype
        zq_bnd, codes_bn = self.tokenizer.quantize_latents(z_bnd.float())
        recon = self.tokenizer.decode_latents(zq_bnd)  # in the weights' dtype
        mse = F.mse_loss(recon.float(), motion.float())
        e_bnd = self.codebook.float()[codes_bn]
        commit = F.mse_loss(z_bnd.float(), e_bnd)
        if self.training:
            stats = self.ema.update(self.codebook, z_bnd.detach().flatten(0, 1), codes_bn.flatten())
            counts_k, restarts = stats["counts"], stats["restarts"]
        else:
            counts_k, restarts = code_histogram(codes_bn, self.codebook.shape[0]), mse.new_zeros(())
        return {
            "loss": mse + self.commitment_weight * commit,
            "mse": mse,
            "commit_loss": commit,
            "perplexity": perplexity(counts_k),
            "usage": (counts_k > 0).float().mean(),
            "restarts": restarts,
            "recon": recon,
            "codes": codes_bn,
        }
