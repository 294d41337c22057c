"""The GMM head: each query token predicts its own k-component diagonal Gaussian mixture
over the D-dim tokenizer feature (divot-reference.md §5.5).

The output projection emits ``P = 2·k·D + k`` numbers per token, laid out
``[means k·D | raw variances k·D | mixture logits k]`` (component-major). Everything here
runs in fp32 whatever the model dtype: bf16 log-densities summed over 256 dims lose
several digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.config.schema import GMMConfig
from divot_llm.model.projection import ProjectionLayer

_LOG_2PI = math.log(2 * math.pi)


@dataclass
class GMMParams:
    """A batch of mixtures, one per token (all fp32)."""

    means: torch.Tensor  # (..., k, D)
    variances: torch.Tensor  # (..., k, D), already floored and scaled
    logits: torch.Tensor  # (..., k) unnormalised mixture weights


class GMMHead:
    """Splits, scores, samples and predicts per-token Gaussian mixtures.

    Args:
        num_components: k.
        dim: D, the tokenizer's feature dim.
        var_floor: Variances are ``clamp(softplus(raw), var_floor) * var_scale``.
        var_scale: Scale of the variances in training (the NLL).
        sample_var_scale: Scale of the variances when sampling at inference (0.1 in the
            reference: std shrinks by sqrt(0.1)).
        normalize_by_dim: Divide the NLL by D, as the reference does.
    """

    def __init__(
        self,
        num_components: int,
        dim: int,
        var_floor: float = 1e-5,
        var_scale: float = 1.0,
        sample_var_scale: float = 0.1,
        normalize_by_dim: bool = True,
    ):
        if num_components < 1 or dim < 1:
            raise ValueError(f"GMM needs k >= 1 and D >= 1, got k={num_components}, D={dim}")
        self.num_components = num_components
        self.dim = dim
        self.var_floor = var_floor
        self.var_scale = var_scale
        self.sample_var_scale = sample_var_scale
        self.normalize_by_dim = normalize_by_dim

    @classmethod
    def from_config(cls, cfg: GMMConfig, dim: int) -> GMMHead:
        return cls(
            num_components=cfg.num_components,
            dim=dim,
            var_floor=cfg.var_floor,
            var_scale=cfg.var_scale,
            sample_var_scale=cfg.sample_var_scale,
            normalize_by_dim=cfg.normalize_by_dim,
        )

    @property
    def param_dim(self) -> int:
        """P = 2·k·D + k numbers per token (8208 for k = 16, D = 256)."""
        return 2 * self.num_components * self.dim + self.num_components

    def input_module(self, hidden: int) -> nn.Module:
        """Features into the LLM: ``ProjectionLayer`` ``D -> H -> H`` (the release's input
        projection)."""
        return ProjectionLayer(self.dim, hidden)

    def output_module(self, hidden: int) -> nn.Module:
        """Query hidden states to mixtures: ``ProjectionLayer`` ``H -> P -> P`` (the
        release's output projection)."""
        return ProjectionLayer(hidden, self.param_dim)

    def split(self, params: torch.Tensor, var_scale: float | None = None) -> GMMParams:
        """``params (..., P)`` -> means, variances, logits in fp32.

        Raises:
            ValueError: the last dim is not P.
        """
        if params.shape[-1] != self.param_dim:
            raise ValueError(f"GMM params have last dim {params.shape[-1]}, expected {self.param_dim}")
        k, d = self.num_components, self.dim
        params = params.float()
        lead = params.shape[:-1]
        means = params[..., : k * d].reshape(*lead, k, d)
        raw_var = params[..., k * d : 2 * k * d].reshape(*lead, k, d)
        scale = self.var_scale if var_scale is None else var_scale
        variances = F.softplus(raw_var).clamp(min=self.var_floor) * scale
        logits = params[..., 2 * k * d :]
        return GMMParams(means=means, variances=variances, logits=logits)

    def nll(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-token negative log-likelihood of ``target (..., D)`` (fp32, shape ``(...)``),
        divided by D when ``normalize_by_dim``; the loss is its mean over tokens."""
        gmm = self.split(params)
        x = target.float().unsqueeze(-2)  # (..., 1, D)
        log_normal_kd = -0.5 * ((x - gmm.means) ** 2 / gmm.variances + gmm.variances.log() + _LOG_2PI)
        log_joint_k = log_normal_kd.sum(dim=-1) + gmm.logits.log_softmax(dim=-1)  # (..., k)
        nll = -torch.logsumexp(log_joint_k, dim=-1)
        return nll / self.dim if self.normalize_by_dim else nll

    def sample(
        self,
        params: torch.Tensor,
        var_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """One draw per token: pick a component from the mixture weights, then sample its
        Gaussian with variances scaled by ``var_scale`` (default ``sample_var_scale``).

        Returns:
            ``(..., D)`` fp32 features.
        """
        gmm = self.split(params, var_scale=self.sample_var_scale if var_scale is None else var_scale)
        lead = gmm.logits.shape[:-1]
        probs_tk = gmm.logits.softmax(dim=-1).reshape(-1, self.num_components)  # (tokens, k)
        component = torch.multinomial(probs_tk, 1, generator=generator).reshape(*lead, 1, 1)
        index = component.expand(*lead, 1, self.dim)
        mean = gmm.means.gather(-2, index).squeeze(-2)  # (..., D)
        var = gmm.variances.gather(-2, index).squeeze(-2)  # (..., D)
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + var.sqrt() * noise

    def predict(self, params: torch.Tensor) -> torch.Tensor:
        """Deterministic prediction: the weight-averaged component mean, ``(..., D)``."""
        gmm = self.split(params)
        weights = gmm.logits.softmax(dim=-1).unsqueeze(-1)  # (..., k, 1)
        return (weights * gmm.means).sum(dim=-2)
