"""The networks of Video-LaVIT's keyframe tokenizer (``lavit.py`` wraps them).

Module and parameter names are the released files', so they load strictly:

* ``EvaViT`` -- the frozen EVA-CLIP ViT (``encoder.*``: ``patch_embed.proj``, ``cls_token``,
  ``pos_embed``, ``blocks.{i}.{norm1, attn.{qkv, q_bias, v_bias, proj}, norm2, mlp.fc1,
  mlp.fc2}``, ``norm``, ``head`` -- the last two are in the weights but unused here);
* ``TokenPredictor`` (``token_predictor.{in_conv, out_conv}``) and ``TokenMerger``
  (``causal_encoder.{blocks, ln_vision, norm}``) of ``tokenizer_encoder.bin``;
* ``CodesDecoder`` -- ``highres_tokenizer_decoder.bin`` (``in_proj``, ``pos_embed``,
  ``query_embed``, ``blocks``, ``norm``, ``decode_task_layer``, ``unet_proj_{1,2}``,
  ``unet_attnpool``).

The merger's attention is not a masked softmax: LaVIT weights ``exp`` of the logits by a
0/1 policy and adds ``eps / N`` to every weight before normalising (``policy_softmax``), so
masked keys keep a tiny weight. That is reproduced exactly; the plain attentions run
through SDPA.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.tokenizers.divot_layers import ViTAttention, ViTMlp
from divot_llm.tokenizers.motion.lavit_layers import BiasedQVAttention

VIT_NORM_EPS = 1e-6  # EVA-CLIP's layer norms
NORM_EPS = 1e-5  # the predictor's, merger's and decoder's
LayerNormViT = partial(nn.LayerNorm, eps=VIT_NORM_EPS)
LayerNorm = partial(nn.LayerNorm, eps=NORM_EPS)
POLICY_EPS = 1e-6


def policy_softmax(logits_bhqk: torch.Tensor, weights_bhqk: torch.Tensor) -> torch.Tensor:
    """LaVIT's softmax under a 0/1 key policy (broadcast to the logits): ``exp(l - max) * w``,
    plus ``eps / K`` on every entry, over the row's sum plus ``eps``; in fp32 and back."""
    keys = logits_bhqk.shape[-1]
    shifted = logits_bhqk - logits_bhqk.amax(dim=-1, keepdim=True)
    weighted = shifted.float().exp() * weights_bhqk.float()
    return ((weighted + POLICY_EPS / keys) / (weighted.sum(dim=-1, keepdim=True) + POLICY_EPS)).to(
        logits_bhqk.dtype
    )


def split_heads(x_bnd: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, dim = x_bnd.shape
    return x_bnd.view(batch, length, heads, dim // heads).transpose(1, 2)


def merge_heads(x_bhnc: torch.Tensor) -> torch.Tensor:
    return x_bhnc.transpose(1, 2).flatten(2)


class QueryKeyValueAttention(nn.Module):
    """Attention of ``x`` over a context through separate ``query``, ``key``, ``value``
    projections and ``proj`` (all with biases); ``forward`` takes how logits become weights."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_bqd: torch.Tensor, context_bkd: torch.Tensor, weights_of) -> torch.Tensor:
        q_bhqc = split_heads(self.query(x_bqd), self.heads)
        k_bhkc = split_heads(self.key(context_bkd), self.heads)
        v_bhkc = split_heads(self.value(context_bkd), self.heads)
        logits_bhqk = (q_bhqc @ k_bhkc.transpose(-2, -1)) * q_bhqc.shape[-1] ** -0.5
        return self.proj(merge_heads(weights_of(logits_bhqk) @ v_bhkc))


# ------------------------------------------------------------------------- the ViT


class EvaBlock(nn.Module):
    """Pre-norm block: q/v-biased attention and a GELU MLP (no layer scale, no sub-LN)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = LayerNormViT(dim)
        self.attn = BiasedQVAttention(dim, heads)
        self.norm2 = LayerNormViT(dim)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        x_bnd = x_bnd + self.attn(self.norm1(x_bnd))
        return x_bnd + self.mlp(self.norm2(x_bnd))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels_bchw).flatten(2).transpose(1, 2)


class EvaViT(nn.Module):
    """EVA-CLIP's vision tower: ``(B, 3, S, S)`` normalised pixels -> ``(B, P, D)`` patch
    features of the last block (no final norm, CLS dropped), as LaVIT reads them."""

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        embed_dim: int,
    ) -> None:
        super().__init__()
        patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, patches + 1, dim))
        self.blocks = nn.ModuleList(EvaBlock(dim, heads, mlp_ratio) for _ in range(depth))
        # the CLIP head (final norm + image-text projection): part of the weights, unused here
        self.norm = LayerNormViT(dim)
        self.head = nn.Linear(dim, embed_dim)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, pixels_bchw: torch.Tensor) -> torch.Tensor:
        x_bpd = self.patch_embed(pixels_bchw)
        x_bnd = torch.cat((self.cls_token.expand(x_bpd.shape[0], -1, -1), x_bpd), dim=1) + self.pos_embed
        for block in self.blocks:
            x_bnd = block(x_bnd)
        return x_bnd[:, 1:]


# ------------------------------------------------------ token predictor and merger


class TokenPredictor(nn.Module):
    """Per-patch keep/drop log-probabilities ``(B, P, 2)`` (column 0: keep) from each patch's
    local half and the image's mean global half."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
            nn.LogSoftmax(dim=-1),
        )

    def forward(self, feats_bpd: torch.Tensor) -> torch.Tensor:
        x_bpd = self.in_conv(feats_bpd)
        half = x_bpd.shape[-1] // 2
        global_b1h = x_bpd[..., half:].mean(dim=1, keepdim=True)  # LaVIT's policy is all ones here
        return self.out_conv(
            torch.cat((x_bpd[..., :half], global_b1h.expand(-1, x_bpd.shape[1], -1)), dim=-1)
        )


def sample_keep(scores_bp2: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(B, P)`` 0/1 keep decisions (the scores' dtype) drawn as ``F.gumbel_softmax(scores,
    hard=True)[..., 0]`` does, from ``generator`` (the default generator when None, the same
    stream torch's own call draws): Gumbel noise ``-log(Exp(1))``, softmax, the argmax."""
    exponential = torch.empty_like(scores_bp2).exponential_(generator=generator)
    soft_bp2 = (scores_bp2 - exponential.log()).softmax(dim=-1)
    return (soft_bp2.argmax(dim=-1) == 0).to(scores_bp2.dtype)


class MergerBlock(nn.Module):
    """Causal self-attention among the kept patches (each patch also sees itself), then
    cross-attention from every patch to the dropped patches' normalised ViT features, then
    the MLP (pre-norm residuals)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm0 = LayerNorm(dim)
        self.token_causal_attn = ViTAttention(dim, heads)  # qkv and proj with biases
        self.norm1 = LayerNorm(dim)
        self.token_cross_attn = QueryKeyValueAttention(dim, heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))

    def forward(self, x_bpd: torch.Tensor, vit_bpd: torch.Tensor, keep_bp: torch.Tensor) -> torch.Tensor:
        x_bpd = x_bpd + self._causal_attention(self.norm0(x_bpd), keep_bp)
        drop_b11p = (1 - keep_bp)[:, None, None, :]
        x_bpd = x_bpd + self.token_cross_attn(
            self.norm1(x_bpd), vit_bpd, lambda logits: policy_softmax(logits, drop_b11p)
        )
        return x_bpd + self.mlp(self.norm2(x_bpd))

    def _causal_attention(self, x_bpd: torch.Tensor, keep_bp: torch.Tensor) -> torch.Tensor:
        attn = self.token_causal_attn
        q_bpd, k_bpd, v_bpd = attn.qkv(x_bpd).chunk(3, dim=-1)
        q_bhpc, k_bhpc, v_bhpc = (split_heads(t, attn.heads) for t in (q_bpd, k_bpd, v_bpd))
        patches = x_bpd.shape[1]
        eye_pp = torch.eye(patches, dtype=keep_bp.dtype, device=keep_bp.device)
        keep_b1pp = keep_bp[:, None, None, :]
        weights_b1pp = (keep_b1pp + (1 - keep_b1pp) * eye_pp) * torch.ones_like(eye_pp).tril()
        logits_bhpp = (q_bhpc @ k_bhpc.transpose(-2, -1)) * q_bhpc.shape[-1] ** -0.5
        return attn.proj(merge_heads(policy_softmax(logits_bhpp, weights_b1pp) @ v_bhpc))


class TokenMerger(nn.Module):
    """``(B, P, D)`` ViT features and keep decisions -> ``(B, P, D)`` features in which the
    kept patches have folded in the dropped ones (only the kept rows are used)."""

    def __init__(self, dim: int, heads: int, depth: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MergerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.ln_vision = LayerNorm(dim)
        self.norm = LayerNorm(dim)

    def forward(self, feats_bpd: torch.Tensor, keep_bp: torch.Tensor) -> torch.Tensor:
        vit_bpd = self.ln_vision(feats_bpd)
        x_bpd = feats_bpd
        for block in self.blocks:
            x_bpd = block(x_bpd, vit_bpd, keep_bp)
        return self.norm(x_bpd)


# ---------------------------------------------------------------------- the decoder


class DecoderBlock(nn.Module):
    """Learned queries: self-attention, cross-attention to the (padded) code embeddings,
    MLP (pre-norm residuals)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm0 = LayerNorm(dim)
        self.self_attn = ViTAttention(dim, heads)
        self.norm1 = LayerNorm(dim)
        self.cross_attn = QueryKeyValueAttention(dim, heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = ViTMlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x_bqd: torch.Tensor, codes_bnd: torch.Tensor, pad_bias_b11n: torch.Tensor
    ) -> torch.Tensor:
        x_bqd = x_bqd + self.self_attn(self.norm0(x_bqd))
        x_bqd = x_bqd + self.cross_attn(
            self.norm1(x_bqd), codes_bnd, lambda logits: (logits + pad_bias_b11n).softmax(dim=-1)
        )
        return x_bqd + self.mlp(self.norm2(x_bqd))


class AttentionPool(nn.Module):
    """One attention step of the mean token (prepended, with positional embeddings) over the
    tokens: CLIP's ``AttentionPool2d`` on a token sequence -> ``(B, out_dim)``."""

    def __init__(self, tokens: int, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(tokens + 1, dim) / dim**0.5)
        self.k_proj, self.q_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.c_proj = nn.Linear(dim, out_dim)

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        x_bnd = torch.cat((x_bnd.mean(dim=1, keepdim=True), x_bnd), dim=1) + self.positional_embedding.to(
            x_bnd.dtype
        )
        q_bh1c = split_heads(self.q_proj(x_bnd[:, :1]), self.heads)
        k_bhnc = split_heads(self.k_proj(x_bnd), self.heads)
        v_bhnc = split_heads(self.v_proj(x_bnd), self.heads)
        return self.c_proj(merge_heads(F.scaled_dot_product_attention(q_bh1c, k_bhnc, v_bhnc))[:, 0])


PAD_LOGIT = -10000.0  # LaVIT's additive bias on padded code positions


class CodesDecoder(nn.Module):
    """Code vectors of each image (variable counts) -> the image de-tokenizer's condition:
    ``(B, P, sum(context_dims))`` per-query context and ``(B, pooled_dim)`` pooled vector.

    P learned queries attend to the codes (projected, plus positional embeddings by their
    order, padded to the longest image with masked positions), are normalised, mapped back
    to ViT-feature width (``decode_task_layer``), then projected per ``context_dims`` and
    attention-pooled."""

    def __init__(
        self,
        patches: int,
        code_dim: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        out_dim: int,
        context_dims: list[int],
        pooled_dim: int,
    ) -> None:
        super().__init__()
        self.in_proj = nn.Linear(code_dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, patches, dim))
        self.query_embed = nn.Parameter(torch.zeros(1, patches, dim))
        self.blocks = nn.ModuleList(DecoderBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = LayerNorm(dim)
        self.decode_task_layer = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, out_dim))
        # unet_proj_1, unet_proj_2, ...: the released names of the context projections
        for index, width in enumerate(context_dims, start=1):
            self.add_module(f"unet_proj_{index}", nn.Linear(out_dim, width))
        self.context_count = len(context_dims)
        self.unet_attnpool = AttentionPool(patches, out_dim, heads, pooled_dim)

    def forward(self, vectors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``vectors``: per image ``(n_i, code_dim)`` code vectors (1 <= n_i <= P)."""
        longest = max(len(v) for v in vectors)
        x_bnd = self.in_proj(torch.nn.utils.rnn.pad_sequence(vectors, batch_first=True))
        valid_bn = torch.zeros(x_bnd.shape[:2], dtype=x_bnd.dtype, device=x_bnd.device)
        for row, v in enumerate(vectors):
            valid_bn[row, : len(v)] = 1
        # the padded rows are zeros of in_proj's width in LaVIT (not in_proj(0) = its bias)
        x_bnd = x_bnd * valid_bn[..., None] + self.pos_embed[:, :longest]
        pad_bias_b11n = ((1.0 - valid_bn) * PAD_LOGIT)[:, None, None, :]
        q_bqd = self.query_embed.expand(len(vectors), -1, -1)
        for block in self.blocks:
            q_bqd = block(q_bqd, x_bnd, pad_bias_b11n)
        rec_bqe = self.decode_task_layer(self.norm(q_bqd))
        context = [getattr(self, f"unet_proj_{i}")(rec_bqe) for i in range(1, self.context_count + 1)]
        return torch.cat(context, dim=-1), self.unet_attnpool(rec_bqe)
