"""The Mistral backbone: build or load it, and grow its vocabulary for Divot's tokens."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn
from transformers import MistralConfig, MistralForCausalLM

from divot_llm.config.schema import ATTN_IMPLEMENTATIONS, LLMConfig


def mistral_config(llm_cfg: LLMConfig) -> MistralConfig:
    """A transformers ``MistralConfig`` from our config's shape fields (base vocabulary)."""
    return MistralConfig(
        vocab_size=llm_cfg.vocab_size,
        hidden_size=llm_cfg.hidden_size,
        intermediate_size=llm_cfg.intermediate_size,
        num_hidden_layers=llm_cfg.num_hidden_layers,
        num_attention_heads=llm_cfg.num_attention_heads,
        num_key_value_heads=llm_cfg.num_key_value_heads,
        max_position_embeddings=llm_cfg.max_position_embeddings,
        rms_norm_eps=llm_cfg.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": llm_cfg.rope_theta},
        sliding_window=llm_cfg.sliding_window,
        attn_implementation=backbone_attn_implementation(llm_cfg.attn_implementation),
    )


def backbone_attn_implementation(requested: str) -> str:
    """The transformers implementation the backbone is built with. ``flex_attention`` is
    ``DivotLLM``'s block-mask path, switched on per batch by ``hidden_states``; the
    backbone on its own (text generation with a KV cache) runs SDPA."""
    return "sdpa" if requested == "flex_attention" else requested


def load_backbone(
    llm_cfg: LLMConfig,
    path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> MistralForCausalLM:
    """The Mistral LLM, from a local HF folder or randomly initialised from the config.

    Args:
        llm_cfg: Shape and attention settings; ``llm_cfg.path`` is the default folder.
        path: HF folder overriding ``llm_cfg.path`` (e.g. a release's ``llm/``).
        dtype: Parameter dtype. The reference loads fp32 and lets DeepSpeed cast.
        device: ``"meta"`` builds the architecture without memory (the folder's
            ``config.json`` only), for parameter counting and memory planning.

    Raises:
        ValueError: unknown ``attn_implementation``.
    """
    if llm_cfg.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"llm.attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {llm_cfg.attn_implementation!r}"
        )
    path = path if path is not None else llm_cfg.path
    implementation = backbone_attn_implementation(llm_cfg.attn_implementation)
    is_meta = device is not None and torch.device(device).type == "meta"
    if path is not None and not is_meta:
        model = MistralForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=implementation)
        return model.to(device) if device is not None else model
    if path is not None:
        config = MistralConfig.from_pretrained(path, attn_implementation=implementation)
    else:
        config = mistral_config(llm_cfg)
    with torch.device(device or "cpu"):
        model = MistralForCausalLM(config)
    return model.to(dtype)


@contextlib.contextmanager
def gathered(params: list[nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
    """Full parameters inside the block under ZeRO-3; a no-op for ordinary tensors.

    With ``modifier_rank`` set, that rank's in-place edits are broadcast to all ranks
    and re-partitioned on exit (``deepspeed.zero.GatheredParameters``).
    """
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def resize_vocab(model: MistralForCausalLM, vocab_size: int, lm_head_rows_scale: float = 3.0) -> bool:
    """Grow the vocabulary to ``vocab_size`` the way the reference does.

    New input-embedding rows are the mean of the old rows; new lm_head rows are
    ``lm_head_rows_scale`` (3) times the mean of the old lm_head rows. Works under
    ZeRO-3 (parameters are gathered; the new full-size parameters are partitioned when
    the DeepSpeed engine is built) and on the meta device.

    Args:
        model: A Mistral causal LM with untied input/output embeddings.
        vocab_size: Target rows (base vocabulary + ``NUM_ADDED_TOKENS``).
        lm_head_rows_scale: Multiplier of the mean for the new lm_head rows.

    Returns:
        Whether rows were added (False when the model already has ``vocab_size`` rows,
        e.g. an SFT base that is a merged pretrain release).

    Raises:
        ValueError: the model has more rows than ``vocab_size``.
    """
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    with gathered([embed.weight, head.weight]):
        old_vocab, hidden = embed.weight.shape
        if old_vocab == vocab_size:
            return False
        if old_vocab > vocab_size:
            raise ValueError(f"model has {old_vocab} vocabulary rows, more than the requested {vocab_size}")
        new_embed_w = _grown(embed.weight.data, vocab_size, scale=1.0)  # (V', H)
        new_head_w = _grown(head.weight.data, vocab_size, scale=lm_head_rows_scale)  # (V', H)

    new_embed = nn.Embedding(vocab_size, hidden, padding_idx=embed.padding_idx, device=new_embed_w.device)
    new_embed.weight = nn.Parameter(new_embed_w, requires_grad=embed.weight.requires_grad)
    new_head = nn.Linear(hidden, vocab_size, bias=False, device=new_head_w.device)
    new_head.weight = nn.Parameter(new_head_w, requires_grad=head.weight.requires_grad)
    model.set_input_embeddings(new_embed)
    model.set_output_embeddings(new_head)
    model.config.vocab_size = vocab_size
    model.vocab_size = vocab_size
    model.model.vocab_size = vocab_size
    return True


def _grown(weight_vh: torch.Tensor, vocab_size: int, scale: float) -> torch.Tensor:
    """``weight_vh`` with rows appended up to ``vocab_size``, each = scale x mean row."""
    old_vocab, hidden = weight_vh.shape
    mean_h = weight_vh.float().mean(dim=0).mul(scale).to(weight_vh.dtype)  # (H,) mean in fp32
    new_rows = mean_h.expand(vocab_size - old_vocab, hidden)
    return torch.cat([weight_vh, new_rows], dim=0).clone()
