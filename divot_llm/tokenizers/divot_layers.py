"""The trainable-in-principle parts of the Divot tokenizer (everything after the ViT).

Module and parameter names copy the reference (``MotionPredictor``,
``SelfAttention_3D_Pos_Down``, ``Resampler_DC``, timm/ViT ``Block``), so the released
``Divot_tokenizer.bin`` loads without renaming. All attention runs through
``scaled_dot_product_attention``; where the reference used ``nn.MultiheadAttention`` its
parameter layout (``in_proj_weight``, ``in_proj_bias``, ``out_proj``) is kept.
Dropouts are all zero in the reference and are left out.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# timm's LayerNorm (used by the reference for the temporal encoder, the pre-transformer
# norm and the ST blocks) is nn.LayerNorm with eps 1e-6; plain nn.LayerNorm elsewhere.
LayerNorm6 = partial(nn.LayerNorm, eps=1e-6)


def multi_head_attention(q_bld: torch.Tensor, k_bsd: torch.Tensor, v_bsd: torch.Tensor, heads: int) -> torch.Tensor:
    """Unmasked softmax attention, 1/sqrt(head_dim) scaling, heads split from the last dim.

    ``(B, L, H*d)`` queries against ``(B, S, H*d)`` keys/values -> ``(B, L, H*d)``.
    """
    q_bhld, k_bhsd, v_bhsd = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q_bld, k_bsd, v_bsd))
    out_bhld = F.scaled_dot_product_attention(q_bhld, k_bhsd, v_bhsd)
    return rearrange(out_bhld, "b h n d -> b n (h d)")


class QuickGELU(nn.Module):
    """CLIP's sigmoid approximation of GELU (used by the temporal encoder's MLPs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


# ------------------------------------------------------------------ temporal encoder


class PackedSelfAttention(nn.Module):
    """Self-attention with ``nn.MultiheadAttention``'s parameters (fused q/k/v input
    projection, q-k-v order), batch-first, computed with SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x_bld: torch.Tensor) -> torch.Tensor:
        q_bld, k_bld, v_bld = F.linear(x_bld, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(multi_head_attention(q_bld, k_bld, v_bld, self.heads))


class TemporalBlock(nn.Module):
    """CLIP-style pre-LN residual block (reference ``ResidualAttentionBlock``)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = PackedSelfAttention(width, heads)
        self.ln_1 = LayerNorm6(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = LayerNorm6(width)

    def forward(self, x_bld: torch.Tensor) -> torch.Tensor:
        x_bld = x_bld + self.attn(self.ln_1(x_bld))
        return x_bld + self.mlp(self.ln_2(x_bld))


class TemporalTransformer(nn.Module):
    """Holds the blocks as ``resblocks`` (the reference's ``Transformer``)."""

    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*[TemporalBlock(width, heads) for _ in range(layers)])

    def forward(self, x_bld: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x_bld)


class TemporalEncoder(nn.Module):
    """Transformer across the frames of one spatial position (reference ``MotionPredictor``).

    ``(B*P, F, input_dim)`` -> ``(B*P, F, output_dim)``, non-causal, with no residual
    from the input.

    The reference builds it with ``zero_init=True`` (identity input projection, zero output
    projection), which only matters when training the tokenizer from scratch: it would
    make a randomly initialised tokenizer map every clip to the same features. Random
    weights here follow the reference's non-zero-init scheme instead.
    """

    def __init__(self, input_dim: int, output_dim: int, width: int, layers: int, heads: int, frames: int) -> None:
        super().__init__()
        self.transformer = TemporalTransformer(width, layers, heads)
        self.input_proj = nn.Linear(input_dim, width)
        self.positional_embedding = nn.Parameter(torch.empty(frames, width))
        self.ln_final = LayerNorm6(width)
        self.output_proj = nn.Linear(width, output_dim)

        nn.init.normal_(self.positional_embedding, std=0.01)
        attn_std = width**-0.5
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x_bfc: torch.Tensor) -> torch.Tensor:
        x_bfw = self.input_proj(x_bfc) + self.positional_embedding
        x_bfw = self.transformer(x_bfw)
        return self.output_proj(self.ln_final(x_bfw))


# ------------------------------------------------------- spatial-temporal transformer


class ViTAttention(nn.Module):
    """Self-attention with one fused ``qkv`` projection (reference ``vit.Attention``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        q_bnd, k_bnd, v_bnd = self.qkv(x_bnd).chunk(3, dim=-1)
        return self.proj(multi_head_attention(q_bnd, k_bnd, v_bnd, self.heads))


class ViTMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-LN ViT block, MLP ratio 4, LayerNorm eps 1e-6 (reference ``vit.Block``)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm6(dim)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = LayerNorm6(dim)
        self.mlp = ViTMlp(dim, 4 * dim)

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        x_bnd = x_bnd + self.attn(self.norm1(x_bnd))
        return x_bnd + self.mlp(self.norm2(x_bnd))


class PerceiverAttention(nn.Module):
    """Latents attend to ``concat(x, latents)``; no biases (reference ``PerceiverAttention``).

    The reference scales q and k by ``dim_head ** -0.25`` each and takes the softmax in
    fp32; SDPA's single ``dim_head ** -0.5`` scale is the same product and its kernels
    accumulate the softmax in fp32.
    """

    def __init__(self, dim: int, dim_head: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x_bsd: torch.Tensor, latents_bld: torch.Tensor) -> torch.Tensor:
        x_bsd = self.norm1(x_bsd)
        latents_bld = self.norm2(latents_bld)
        q_bli = self.to_q(latents_bld)
        k_bti, v_bti = self.to_kv(torch.cat([x_bsd, latents_bld], dim=1)).chunk(2, dim=-1)
        return self.to_out(multi_head_attention(q_bli, k_bti, v_bti, self.heads))


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LN -> Linear -> GELU -> Linear, no biases (keys ``0``, ``1``, ``3`` as the reference)."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, mult * dim, bias=False),
        nn.GELU(),
        nn.Linear(mult * dim, dim, bias=False),
    )


class PerceiverResampler(nn.Module):
    """Learned latents read the ST tokens -> ``(B, num_queries, output_dim)`` (reference ``Resampler_DC``)."""

    def __init__(
        self, dim: int, depth: int, dim_head: int, heads: int, num_queries: int, embedding_dim: int, output_dim: int
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(embedding_dim, dim)
        self.proj_out = nn.Linear(dim, output_dim)
        self.norm_out = nn.LayerNorm(output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim, dim_head, heads), feed_forward(dim)]) for _ in range(depth)
        )

    def forward(self, x_bse: torch.Tensor) -> torch.Tensor:
        latents_bqd = self.latents.expand(x_bse.shape[0], -1, -1)
        x_bsd = self.proj_in(x_bse)
        for attn, ff in self.layers:
            latents_bqd = attn(x_bsd, latents_bqd) + latents_bqd
            latents_bqd = ff(latents_bqd) + latents_bqd
        return self.norm_out(self.proj_out(latents_bqd))


class SpatioTemporalTransformer(nn.Module):
    """Position embeddings + ViT blocks + LayerNorm, then the resampler
    (reference ``SelfAttention_3D_Pos_Down``, the ``image_proj_model``).

    ``(B, F*S, dim)`` tokens in frame-major order -> ``(B, num_queries, output_dim)``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        depth: int,
        frames: int,
        tokens_per_frame: int,
        resampler_depth: int,
        resampler_heads: int,
        resampler_dim_head: int,
        num_queries: int,
        output_dim: int,
    ) -> None:
        super().__init__()
        self.frames = frames
        self.blocks = nn.ModuleList(ViTBlock(dim, heads) for _ in range(depth))
        self.pos_embed_spatial = nn.Parameter(dim**-0.5 * torch.randn(tokens_per_frame, dim))
        self.pos_embed_temporal = nn.Parameter(dim**-0.5 * torch.randn(frames, dim))
        self.norm = nn.LayerNorm(dim)
        self.down_sampler = PerceiverResampler(
            dim=dim,
            depth=resampler_depth,
            dim_head=resampler_dim_head,
            heads=resampler_heads,
            num_queries=num_queries,
            embedding_dim=dim,
            output_dim=output_dim,
        )

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        x_bfsd = rearrange(x_bnd, "b (f s) d -> b f s d", f=self.frames)
        # Spatial embedding shared by all frames, temporal one by all positions of a frame.
        x_bfsd = x_bfsd + self.pos_embed_spatial[None, None] + self.pos_embed_temporal[None, :, None]
        x_bnd = rearrange(x_bfsd, "b f s d -> b (f s) d")
        for block in self.blocks:
            x_bnd = block(x_bnd)
        return self.down_sampler(self.norm(x_bnd))
