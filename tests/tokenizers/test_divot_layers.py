"""Divot layers against the reference computations they replace (SDPA vs explicit softmax)."""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from divot_llm.tokenizers.divot import DivotVideoEncoder
from divot_llm.tokenizers.divot_layers import PackedSelfAttention, PerceiverAttention, ViTAttention


def test_temporal_attention_equals_multihead_attention_with_same_weights():
    # The reference uses nn.MultiheadAttention; its state dict must load unchanged and
    # give the same output.
    mha = nn.MultiheadAttention(32, 4, batch_first=True)
    nn.init.normal_(mha.in_proj_bias)
    nn.init.normal_(mha.out_proj.bias)
    ours = PackedSelfAttention(32, 4)
    ours.load_state_dict(mha.state_dict(), strict=True)
    x = torch.randn(6, 5, 32)
    torch.testing.assert_close(ours(x), mha(x, x, x, need_weights=False)[0], atol=1e-6, rtol=1e-5)


def test_vit_attention_equals_explicit_softmax_attention():
    attn = ViTAttention(32, 4)
    x = torch.randn(2, 10, 32)
    # reference vit.Attention: qkv -> (3, B, H, N, d), softmax(q k^T * d^-0.5) v, proj
    qkv = attn.qkv(x).reshape(2, 10, 3, 4, 8).permute(2, 0, 3, 1, 4)
    weights = (qkv[0] @ qkv[1].transpose(-2, -1) * 8**-0.5).softmax(dim=-1)
    expected = attn.proj((weights @ qkv[2]).transpose(1, 2).reshape(2, 10, 32))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


def test_perceiver_attention_equals_reference_formula():
    attn = PerceiverAttention(dim=32, dim_head=8, heads=4)
    nn.init.normal_(attn.norm1.weight)
    nn.init.normal_(attn.norm2.bias)
    x, latents = torch.randn(2, 12, 32), torch.randn(2, 6, 32)
    # reference: k/v from concat(x, latents), q and k each scaled by d^-1/4, fp32 softmax
    xn, ln = attn.norm1(x), attn.norm2(latents)
    q = attn.to_q(ln).view(2, 6, 4, 8).transpose(1, 2)
    k, v = attn.to_kv(torch.cat([xn, ln], dim=1)).chunk(2, dim=-1)
    k, v = (t.view(2, 18, 4, 8).transpose(1, 2) for t in (k, v))
    scale = 1 / math.sqrt(math.sqrt(8))
    weights = torch.softmax(((q * scale) @ (k * scale).transpose(-2, -1)).float(), dim=-1)
    expected = attn.to_out((weights @ v).permute(0, 2, 1, 3).reshape(2, 6, 32))
    torch.testing.assert_close(attn(x, latents), expected, atol=1e-6, rtol=1e-5)


def test_encoder_layout_follows_the_reference_forward(tiny_config):
    """Rearrangements and pooling order, written as the reference forward does them."""
    encoder = DivotVideoEncoder(tiny_config).eval()
    batch, frames, grid, width = 2, tiny_config.frames_per_clip, 4, tiny_config.vit_width
    patches = torch.randn(batch, frames, grid * grid, width)

    x = rearrange(patches, "b f n c -> (b n) f c")
    x = encoder.temporal_encoder(x)
    x = rearrange(x, "(b n) f c -> b f n c", b=batch)
    x = rearrange(x, "b f (h w) c -> (b f) c h w", h=grid, w=grid)
    x = rearrange(encoder.spatial_pool(x), "(b f) c h w -> b (f h w) c", b=batch)
    x = encoder.norm(x)
    st = encoder.image_proj_model
    x = x.reshape(batch, frames, tiny_config.pool_size**2, -1)
    x = x + st.pos_embed_spatial.unsqueeze(0).unsqueeze(1) + st.pos_embed_temporal.unsqueeze(0).unsqueeze(2)
    x = x.reshape(batch, -1, x.shape[-1])
    for block in st.blocks:
        x = block(x)
    expected = st.down_sampler(st.norm(x))

    with torch.no_grad():
        got = encoder(patches)
    assert got.shape == (batch, tiny_config.num_tokens, tiny_config.feature_dim)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
