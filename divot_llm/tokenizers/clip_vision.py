"""The frozen CLIP ViT of the Divot tokenizer, through transformers' ``CLIPVisionModel``.

Weights come from either
* an HF folder (``CLIPVisionModel`` or a full ``CLIPModel``, such as
  ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``), or
* an open_clip checkpoint file (``open_clip_pytorch_model.bin`` / ``.safetensors``, the
  file the reference loads), whose ``visual.*`` names are mapped to transformers names.

The tower returns the patch tokens of the last block: no ``ln_post``/post-layernorm, no
projection, CLS dropped (reference §3.1). Attention runs through SDPA.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from divot_llm.tokenizers.preprocess import clip_preprocess

# Fields that must agree between an HF folder's config and the tokenizer config.
_CHECKED_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "patch_size", "image_size")


def clip_vision_config(
    width: int, layers: int, heads: int, mlp_dim: int, patch_size: int, image_size: int
) -> CLIPVisionConfig:
    """A ``CLIPVisionConfig`` for an open_clip-style ViT (exact GELU, LayerNorm eps 1e-5,
    as open_clip's ViT-H-14)."""
    return CLIPVisionConfig(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=mlp_dim,
        patch_size=patch_size,
        image_size=image_size,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat state dict from ``.safetensors`` or a torch pickle (loaded weights-only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


# open_clip visual name -> transformers name (relative to the vision transformer).
_OPENCLIP_RENAMES = [
    (r"visual\.class_embedding", "embeddings.class_embedding"),
    (r"visual\.positional_embedding", "embeddings.position_embedding.weight"),
    (r"visual\.conv1\.weight", "embeddings.patch_embedding.weight"),
    (r"visual\.ln_pre\.(weight|bias)", r"pre_layrnorm.\1"),  # sic: transformers' spelling
    (r"visual\.ln_post\.(weight|bias)", r"post_layernorm.\1"),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)",
     r"encoder.layers.\1.self_attn.out_proj.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"encoder.layers.\1.mlp.fc1.\2"),
    (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"encoder.layers.\1.mlp.fc2.\2"),
]
_OPENCLIP_IN_PROJ = re.compile(r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)")
_OPENCLIP_UNUSED = {"visual.proj"}  # image-text projection: CLIPVisionModel has none, Divot skips it


def openclip_to_hf_vision(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an open_clip checkpoint's ``visual.*`` weights to ``CLIPVisionModel`` names.

    Non-visual keys (the text tower, ``logit_scale``) are dropped. The fused attention
    input projection is split into q/k/v in ``nn.MultiheadAttention``'s order.

    Raises:
        ValueError: no ``visual.*`` key, or one this mapping does not know (an open_clip
            variant such as layer-scale or attention pooling, which the HF model cannot
            represent: better to fail than to drop weights silently).
    """
    mapped: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for name, tensor in state_dict.items():
        if not name.startswith("visual.") or name in _OPENCLIP_UNUSED:
            continue
        fused = _OPENCLIP_IN_PROJ.fullmatch(name)
        if fused:
            layer, kind = fused.groups()
            for part, chunk in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                mapped[f"encoder.layers.{layer}.self_attn.{part}_proj.{kind}"] = chunk.clone()
            continue
        for pattern, replacement in _OPENCLIP_RENAMES:
            if re.fullmatch(pattern, name):
                mapped[re.sub(pattern, replacement, name)] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"open_clip keys with no CLIPVisionModel counterpart: {unknown[:8]}")
    if not mapped:
        raise ValueError("no open_clip 'visual.*' weights in the checkpoint")
    return mapped


def _vision_transformer(model: CLIPVisionModel) -> nn.Module:
    # transformers < 5 nests the tower under ``vision_model``; 5.x flattened it.
    return getattr(model, "vision_model", model)


def load_clip_vision(path: str | os.PathLike | None, config: CLIPVisionConfig) -> CLIPVisionModel:
    """The CLIP vision tower in fp32, from an HF folder, an open_clip file or random init.

    Args:
        path: HF folder, open_clip checkpoint file, or None for random weights.
        config: the architecture the tokenizer expects; an HF folder must agree with it.

    Raises:
        ValueError: the folder's architecture differs from ``config``, or weights are missing.
    """
    if path is None:
        return CLIPVisionModel._from_config(config, attn_implementation="sdpa")
    if Path(path).is_dir():
        model, info = CLIPVisionModel.from_pretrained(path, attn_implementation="sdpa", output_loading_info=True)
        mismatched = [f"{k}: folder {getattr(model.config, k)} != config {getattr(config, k)}"
                      for k in _CHECKED_FIELDS if getattr(model.config, k) != getattr(config, k)]
        if mismatched:
            raise ValueError(f"CLIP vision tower in {path} does not match the tokenizer config: {mismatched}")
        if info["missing_keys"]:
            raise ValueError(f"CLIP vision weights missing from {path}: {sorted(info['missing_keys'])[:8]}")
        return model.float()  # fp32 like the rest of the tokenizer; the caller picks the dtype
    model = CLIPVisionModel._from_config(config, attn_implementation="sdpa")
    try:
        _vision_transformer(model).load_state_dict(openclip_to_hf_vision(load_weights_file(path)), strict=True)
    except RuntimeError as err:  # missing / mis-shaped keys
        raise ValueError(f"open_clip checkpoint {path} does not fit the tokenizer's ViT config: {err}") from err
    return model


class ClipVisionTower(nn.Module):
    """Frames in [-1, 1] -> CLIP patch tokens of the last block, CLS dropped.

    Args:
        model: the CLIP vision model (see ``load_clip_vision``).
    """

    def __init__(self, model: CLIPVisionModel) -> None:
        super().__init__()
        self.model = model
        self.image_size: int = model.config.image_size
        self.width: int = model.config.hidden_size
        self.grid: int = model.config.image_size // model.config.patch_size  # patches per side

    def forward(self, frames_bchw: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [-1, 1] -> ``(B, grid**2, width)``."""
        pixels_bchw = clip_preprocess(frames_bchw, self.image_size).to(self.model.dtype)
        # last_hidden_state is the last block's output; the post-layernorm only touches
        # the pooled CLS output, which Divot does not use.
        tokens_bpc = self.model(pixel_values=pixels_bchw).last_hidden_state
        return tokens_bpc[:, 1:]
