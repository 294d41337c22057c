"""The two projection heads between the video-feature space and the LLM."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionLayer(nn.Module):
    """Token-wise two-layer MLP ``Linear(in, out) -> GELU -> Linear(out, out)``.

    The parameter names (``proj.0.*``, ``proj.2.*``) are the release's, so the
    ``agent/pytorch_model.bin`` tensors load as they are. Divot uses two of these:
    input ``D -> H -> H`` (features into the LLM) and output ``H -> P -> P`` with
    ``P = 2·k·D + k`` GMM parameters per query token.
    """

    def __init__(self, input_dim: int, output_dim: int):
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.proj = nn.Sequential(
            nn.Linear(input_dim, output_dim), nn.GELU(), nn.Linear(output_dim, output_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., input_dim) -> (..., output_dim)``."""
        return self.proj(x)
