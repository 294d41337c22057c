"""How a clip's N feature tokens become the LLM's M tokens per clip and back
(``model.resampler``).

* ``tokenwise``: M = N. The video head's input module maps each feature token to one
  LLM token, its output module each query state to one token's parameters (Divot's
  projections, the code heads' embeddings and classifiers).
* ``queries``: M = ``num_queries`` whatever N (a VidTok latent grid may have thousands of
  positions, the LLM has 256 ``<frame_i>`` tokens). Input: the head's input module embeds
  the N features, a learned embedding of each of the N grid positions is added, and M
  learned queries cross-attend to them -> ``(G, M, H)``. Output: N learned position
  queries cross-attend to the M query states of the LLM -> ``(G, N, H)``, then the head's
  output module -> ``(G, N, P)``: the loss and the samples stay per feature token.

The attention is pre-norm with a residual, one ``CrossAttention`` per layer, and no MLP:
the head's modules on either side already are the per-token maps. Its projections are
plain ``nn.Linear`` called through their forwards, so ZeRO-3 gathers them as it gathers
any layer. The modules stay under the ``input_resampler.`` / ``output_resampler.`` keys
of the release (``DivotLLM``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.config.schema import ResamplerConfig
from divot_llm.model.heads import VideoHead

QUERIES = "queries"
# std of the learned queries and position embeddings at init: transformers' initializer_range
QUERY_INIT_STD = 0.02


def llm_tokens(cfg: ResamplerConfig, feature_tokens: int) -> int:
    """M, the LLM's tokens per clip (placeholders, generation queries) for clips of
    ``feature_tokens`` (N) features."""
    return cfg.num_queries if cfg.kind == QUERIES else feature_tokens


class CrossAttention(nn.Module):
    """``queries + out(attention(norm(queries), norm(context)))``: ``(G, Q, H)`` queries
    over a ``(G, K, H)`` context -> ``(G, Q, H)``, ``heads`` heads, no mask."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"model.resampler.heads={heads} must divide the LLM's hidden size {hidden}")
        self.heads = heads
        self.norm_q = nn.LayerNorm(hidden)
        self.norm_kv = nn.LayerNorm(hidden)
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, queries_gqh: torch.Tensor, context_gkh: torch.Tensor) -> torch.Tensor:
        context_gkh = self.norm_kv(context_gkh)
        q, k, v = (
            proj(x).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (G, heads, tokens, H / heads)
            for proj, x in ((self.q, self.norm_q(queries_gqh)), (self.k, context_gkh), (self.v, context_gkh))
        )
        attended_gqh = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(-2)
        return queries_gqh + self.out(attended_gqh)


def _learned(rows: int, hidden: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(rows, hidden) * QUERY_INIT_STD)


def _per_clip(table: nn.Parameter, clips: int) -> torch.Tensor:
    """``(Q, H)`` learned rows -> ``(G, Q, H)``, a copy: a view of a parameter made under
    no_grad cannot carry the autograd hooks some tools put on module inputs (torch's
    ``FlopCounterMode`` module tracker)."""
    return table.unsqueeze(0).repeat(clips, 1, 1)


def _check_tokens(what: str, x: torch.Tensor, tokens: int) -> None:
    if x.ndim != 3 or x.shape[1] != tokens:
        raise ValueError(f"{what}: expected (G, {tokens}, dim) per clip, got shape {tuple(x.shape)}")


class InputQueryResampler(nn.Module):
    """``(G, N, D)`` clip features -> ``(G, M, H)`` LLM inputs through M learned queries.

    Args:
        token_module: The head's input module, ``(..., D) -> (..., H)``.
        feature_tokens: N (one learned position embedding each).
        num_queries: M.
        hidden: H.
        heads, layers: ``model.resampler``'s.
    """

    def __init__(
        self,
        token_module: nn.Module,
        feature_tokens: int,
        num_queries: int,
        hidden: int,
        heads: int,
        layers: int,
    ):
        super().__init__()
        self.token_module = token_module
        self.positions = _learned(feature_tokens, hidden)  # (N, H)
        self.queries = _learned(num_queries, hidden)  # (M, H)
        self.blocks = nn.ModuleList(CrossAttention(hidden, heads) for _ in range(layers))

    def forward(self, feats_gnd: torch.Tensor) -> torch.Tensor:
        _check_tokens("input resampler", feats_gnd, self.positions.shape[0])
        context_gnh = self.token_module(feats_gnd) + self.positions
        queries_gmh = _per_clip(self.queries, feats_gnd.shape[0])
        for block in self.blocks:
            queries_gmh = block(queries_gmh, context_gnh)
        return queries_gmh


class OutputQueryResampler(nn.Module):
    """``(G, M, H)`` query states -> ``(G, N, P)`` head parameters through N learned
    position queries.

    Args:
        token_module: The head's output module, ``(..., H) -> (..., P)``.
        feature_tokens: N.
        num_queries: M, the states each clip brings.
        hidden: H.
        heads, layers: ``model.resampler``'s.
    """

    def __init__(
        self,
        token_module: nn.Module,
        feature_tokens: int,
        num_queries: int,
        hidden: int,
        heads: int,
        layers: int,
    ):
        super().__init__()
        self.num_queries = num_queries
        self.positions = _learned(feature_tokens, hidden)  # (N, H)
        self.blocks = nn.ModuleList(CrossAttention(hidden, heads) for _ in range(layers))
        self.token_module = token_module

    def forward(self, hidden_gmh: torch.Tensor) -> torch.Tensor:
        _check_tokens("output resampler", hidden_gmh, self.num_queries)
        positions_gnh = _per_clip(self.positions, hidden_gmh.shape[0])
        for block in self.blocks:
            positions_gnh = block(positions_gnh, hidden_gmh)
        return self.token_module(positions_gnh)


def build_resamplers(
    cfg: ResamplerConfig, head: VideoHead, hidden: int, feature_tokens: int
) -> tuple[nn.Module, nn.Module]:
    """(input, output) modules of ``DivotLLM``: ``(G, N, D) -> (G, M, H)`` and
    ``(G, M, H) -> (G, N, P)``; ``tokenwise``: the head's own modules (M = N).

    Raises:
        ValueError: ``cfg.heads`` does not divide ``hidden``.
    """
    if cfg.kind != QUERIES:
        return head.input_module(hidden), head.output_module(hidden)
    shape = {"feature_tokens": feature_tokens, "num_queries": cfg.num_queries, "hidden": hidden}
    sizes = {"heads": cfg.heads, "layers": cfg.layers}
    return (
        InputQueryResampler(head.input_module(hidden), **shape, **sizes),
        OutputQueryResampler(head.output_module(hidden), **shape, **sizes),
    )
