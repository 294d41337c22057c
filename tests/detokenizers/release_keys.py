"""The key names and shapes of ``Divot_detokenizer_stage{1,2}.bin``, written out from the
reference's module structure (lvdm ``openaimodel3d``/``attention``, LDM ``AutoencoderKL``,
``Resampler_DC``; reference §4, §9.2) independently of ``divot_llm.detokenizers``.

Counts documented elsewhere anchor the table: the DynamiCrafter-256 UNet (same layout,
learnable image-attention scale) has 1532 tensors and about 1.44 B parameters
(seed-systems.md d.1/d.2), the de-tokenizer's Resampler_DC 76,977,152 parameters
(reference §4.4), and the SD KL-f8 VAE 83,653,863.
"""

from __future__ import annotations

Shapes = dict[str, tuple[int, ...]]

# Released Divot values (reference §4.1, §4.3, §4.4).
MODEL_CHANNELS = 320
CHANNEL_MULT = (1, 2, 4, 4)
NUM_RES_BLOCKS = 2
ATTENTION_RESOLUTIONS = (4, 2, 1)
HEAD_CHANNELS = 64
CONTEXT_DIM = 1024
LATENT_CHANNELS = 4
VAE_CH, VAE_CH_MULT, VAE_RES_BLOCKS = 128, (1, 2, 4, 4), 2


def _linear(prefix: str, out: int, inp: int, bias: bool = True) -> Shapes:
    shapes = {f"{prefix}.weight": (out, inp)}
    if bias:
        shapes[f"{prefix}.bias"] = (out,)
    return shapes


def _conv(prefix: str, out: int, inp: int, *kernel: int) -> Shapes:
    return {f"{prefix}.weight": (out, inp, *kernel), f"{prefix}.bias": (out,)}


def _norm(prefix: str, channels: int) -> Shapes:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,)}


def _attention(prefix: str, dim: int, context: int, image: bool) -> Shapes:
    shapes = {
        **_linear(f"{prefix}.to_q", dim, dim, bias=False),
        **_linear(f"{prefix}.to_k", dim, context, bias=False),
        **_linear(f"{prefix}.to_v", dim, context, bias=False),
        **_linear(f"{prefix}.to_out.0", dim, dim),
    }
    if image:
        shapes |= _linear(f"{prefix}.to_k_ip", dim, context, bias=False)
        shapes |= _linear(f"{prefix}.to_v_ip", dim, context, bias=False)
        shapes[f"{prefix}.alpha"] = ()
    return shapes


def _basic_block(prefix: str, dim: int, cross: bool) -> Shapes:
    """BasicTransformerBlock: attn1 (self), ff (GEGLU, mult 4), attn2 (cross or self), 3 norms."""
    return {
        **_attention(f"{prefix}.attn1", dim, dim, image=False),
        **_linear(f"{prefix}.ff.net.0.proj", 8 * dim, dim),
        **_linear(f"{prefix}.ff.net.2", dim, 4 * dim),
        **_attention(f"{prefix}.attn2", dim, CONTEXT_DIM if cross else dim, image=cross),
        **_norm(f"{prefix}.norm1", dim),
        **_norm(f"{prefix}.norm2", dim),
        **_norm(f"{prefix}.norm3", dim),
    }


def _spatial(prefix: str, ch: int) -> Shapes:
    return {
        **_norm(f"{prefix}.norm", ch),
        **_linear(f"{prefix}.proj_in", ch, ch),
        **_basic_block(f"{prefix}.transformer_blocks.0", ch, cross=True),
        **_linear(f"{prefix}.proj_out", ch, ch),
    }


def _temporal(prefix: str, ch: int, inner: int, conv: bool) -> Shapes:
    proj_in = _conv(f"{prefix}.proj_in", inner, ch, 1) if conv else _linear(f"{prefix}.proj_in", inner, ch)
    proj_out = _conv(f"{prefix}.proj_out", ch, inner, 1) if conv else _linear(f"{prefix}.proj_out", ch, inner)
    return {
        **_norm(f"{prefix}.norm", ch),
        **proj_in,
        **_basic_block(f"{prefix}.transformer_blocks.0", inner, cross=False),
        **proj_out,
    }


def _resblock(prefix: str, ch: int, out: int) -> Shapes:
    emb = 4 * MODEL_CHANNELS
    shapes = {
        **_norm(f"{prefix}.in_layers.0", ch),
        **_conv(f"{prefix}.in_layers.2", out, ch, 3, 3),
        **_linear(f"{prefix}.emb_layers.1", out, emb),
        **_norm(f"{prefix}.out_layers.0", out),
        **_conv(f"{prefix}.out_layers.3", out, out, 3, 3),
    }
    if ch != out:
        shapes |= _conv(f"{prefix}.skip_connection", out, ch, 1, 1)
    for i, conv in ((1, 2), (2, 3), (3, 3), (4, 3)):  # conv1 has no dropout: its Conv3d is index 2
        shapes |= _norm(f"{prefix}.temopral_conv.conv{i}.0", out)
        shapes |= _conv(f"{prefix}.temopral_conv.conv{i}.{conv}", out, out, 3, 1, 1)
    return shapes


def unet_key_shapes() -> Shapes:
    """``diffusion_model.*`` of the release file (without the prefix)."""
    emb = 4 * MODEL_CHANNELS
    shapes: Shapes = {}
    for name in ("time_embed", "fps_embedding"):
        shapes |= _linear(f"{name}.0", emb, MODEL_CHANNELS) | _linear(f"{name}.2", emb, emb)
    shapes |= _conv("input_blocks.0.0", MODEL_CHANNELS, LATENT_CHANNELS, 3, 3)
    shapes |= _temporal("init_attn.0", MODEL_CHANNELS, 8 * HEAD_CHANNELS, conv=True)

    skips, ch, ds, block = [MODEL_CHANNELS], MODEL_CHANNELS, 1, 1
    for level, mult in enumerate(CHANNEL_MULT):
        for _ in range(NUM_RES_BLOCKS):
            out = mult * MODEL_CHANNELS
            shapes |= _resblock(f"input_blocks.{block}.0", ch, out)
            ch = out
            if ds in ATTENTION_RESOLUTIONS:
                shapes |= _spatial(f"input_blocks.{block}.1", ch) | _temporal(
                    f"input_blocks.{block}.2", ch, ch, False
                )
            skips.append(ch)
            block += 1
        if level < len(CHANNEL_MULT) - 1:
            shapes |= _conv(f"input_blocks.{block}.0.op", ch, ch, 3, 3)
            skips.append(ch)
            block, ds = block + 1, ds * 2

    shapes |= _resblock("middle_block.0", ch, ch) | _spatial("middle_block.1", ch)
    shapes |= _temporal("middle_block.2", ch, ch, False) | _resblock("middle_block.3", ch, ch)

    block = 0
    for level, mult in reversed(list(enumerate(CHANNEL_MULT))):
        for i in range(NUM_RES_BLOCKS + 1):
            out = mult * MODEL_CHANNELS
            shapes |= _resblock(f"output_blocks.{block}.0", ch + skips.pop(), out)
            ch, index = out, 1
            if ds in ATTENTION_RESOLUTIONS:
                shapes |= _spatial(f"output_blocks.{block}.1", ch) | _temporal(
                    f"output_blocks.{block}.2", ch, ch, False
                )
                index = 3
            if level and i == NUM_RES_BLOCKS:
                shapes |= _conv(f"output_blocks.{block}.{index}.conv", ch, ch, 3, 3)
                ds //= 2
            block += 1
    shapes |= _norm("out.0", MODEL_CHANNELS) | _conv("out.2", LATENT_CHANNELS, MODEL_CHANNELS, 3, 3)
    return shapes


def _vae_resnet(prefix: str, inp: int, out: int) -> Shapes:
    shapes = {
        **_norm(f"{prefix}.norm1", inp),
        **_conv(f"{prefix}.conv1", out, inp, 3, 3),
        **_norm(f"{prefix}.norm2", out),
        **_conv(f"{prefix}.conv2", out, out, 3, 3),
    }
    if inp != out:
        shapes |= _conv(f"{prefix}.nin_shortcut", out, inp, 1, 1)
    return shapes


def _vae_mid(prefix: str, ch: int) -> Shapes:
    shapes = _vae_resnet(f"{prefix}.block_1", ch, ch) | _vae_resnet(f"{prefix}.block_2", ch, ch)
    shapes |= _norm(f"{prefix}.attn_1.norm", ch)
    for name in ("q", "k", "v", "proj_out"):
        shapes |= _conv(f"{prefix}.attn_1.{name}", ch, ch, 1, 1)
    return shapes


def vae_key_shapes(
    ch: int = VAE_CH, ch_mult: tuple[int, ...] = VAE_CH_MULT, z: int = LATENT_CHANNELS
) -> Shapes:
    """``first_stage_model.*`` (LDM ``Encoder``/``Decoder`` names, without the prefix)."""
    levels = len(ch_mult)
    shapes = _conv("encoder.conv_in", ch, 3, 3, 3)
    block_in = ch
    for i, mult in enumerate(ch_mult):
        out = ch * mult
        for j in range(VAE_RES_BLOCKS):
            shapes |= _vae_resnet(f"encoder.down.{i}.block.{j}", block_in, out)
            block_in = out
        if i < levels - 1:
            shapes |= _conv(f"encoder.down.{i}.downsample.conv", out, out, 3, 3)
    shapes |= _vae_mid("encoder.mid", block_in)
    shapes |= _norm("encoder.norm_out", block_in) | _conv("encoder.conv_out", 2 * z, block_in, 3, 3)
    shapes |= _conv("quant_conv", 2 * z, 2 * z, 1, 1) | _conv("post_quant_conv", z, z, 1, 1)

    block_in = ch * ch_mult[-1]
    shapes |= _conv("decoder.conv_in", block_in, z, 3, 3) | _vae_mid("decoder.mid", block_in)
    for i in reversed(range(levels)):
        out = ch * ch_mult[i]
        for j in range(VAE_RES_BLOCKS + 1):
            shapes |= _vae_resnet(f"decoder.up.{i}.block.{j}", block_in, out)
            block_in = out
        if i > 0:
            shapes |= _conv(f"decoder.up.{i}.upsample.conv", out, out, 3, 3)
    shapes |= _norm("decoder.norm_out", block_in) | _conv("decoder.conv_out", 3, block_in, 3, 3)
    return shapes


def resampler_key_shapes(
    dim: int = CONTEXT_DIM,
    depth: int = 6,
    queries: int = 125,
    embedding_dim: int = 256,
    heads: int = 16,
    head: int = 64,
) -> Shapes:
    """``image_proj_model.*`` (Resampler_DC, without the prefix)."""
    inner = heads * head
    shapes: Shapes = {"latents": (1, queries, dim)}
    shapes |= _linear("proj_in", dim, embedding_dim) | _linear("proj_out", dim, dim) | _norm("norm_out", dim)
    for i in range(depth):
        shapes |= _norm(f"layers.{i}.0.norm1", dim) | _norm(f"layers.{i}.0.norm2", dim)
        shapes |= _linear(f"layers.{i}.0.to_q", inner, dim, bias=False)
        shapes |= _linear(f"layers.{i}.0.to_kv", 2 * inner, dim, bias=False)
        shapes |= _linear(f"layers.{i}.0.to_out", dim, inner, bias=False)
        shapes |= _norm(f"layers.{i}.1.0", dim)
        shapes |= _linear(f"layers.{i}.1.1", 4 * dim, dim, bias=False)
        shapes |= _linear(f"layers.{i}.1.3", dim, 4 * dim, bias=False)
    return shapes


def release_key_shapes() -> Shapes:
    """Every de-tokenizer key of the release file with its shape."""
    return {
        **{f"diffusion_model.{k}": v for k, v in unet_key_shapes().items()},
        **{f"first_stage_model.{k}": v for k, v in vae_key_shapes().items()},
        **{f"image_proj_model.{k}": v for k, v in resampler_key_shapes().items()},
    }
