"""The Divot tokenizer: 5 frames -> 64 continuous 256-d tokens (reference §3).

Pipeline for B clips of F frames (real shapes in brackets):

1. CLIP ViT (frozen, in-module preprocessing): patch tokens of the last block, CLS
   dropped -> (B*F, P [256 = 16x16], C [1280]); a still clip (F identical frames: an
   image) runs the ViT on one frame, reused for all F (``frame_patches``).
2. Temporal encoder across the F frames of each spatial position -> (B*P, F, hidden [1024]).
3. Per-frame adaptive average pool of the patch grid to pool x pool [5x5], frame-major
   flatten, LayerNorm -> (B, F*pool^2 [125], hidden).
4. Spatial-temporal transformer with spatial + temporal position embeddings, then the
   Perceiver resampler -> (B, N [64], D [256]).

Weights: the ViT from its own file (``vit_path``), everything else from the release file
``Divot_tokenizer.bin`` (``pretrained_path``), whose names match ``DivotVideoEncoder``
exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import save_file
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from divot_llm.tokenizers.base import VideoTokenizer, config_value, still_clips
from divot_llm.tokenizers.clip_vision import (
    ClipVisionTower,
    clip_vision_config,
    load_clip_vision,
    load_weights_file,
)
from divot_llm.tokenizers.divot_config import DivotTokenizerConfig
from divot_llm.tokenizers.divot_layers import LayerNorm6, SpatioTemporalTransformer, TemporalEncoder
from divot_llm.tokenizers.registry import register_video_tokenizer

# The release file may also carry the reference's ViT wrapper (``vit_model.model.*``,
# text tower included); the ViT is loaded from its own file instead.
RELEASE_VIT_PREFIX = "vit_model."

# save_pretrained layout (+ VideoTokenizer.config_file)
ENCODER_WEIGHTS = "divot_tokenizer.safetensors"  # DivotVideoEncoder, release key names
VIT_DIR = "vit"  # CLIPVisionModel HF folder


def vit_config(config: DivotTokenizerConfig) -> CLIPVisionConfig:
    """The CLIP vision architecture a Divot tokenizer config describes."""
    return clip_vision_config(
        width=config.vit_width,
        layers=config.vit_layers,
        heads=config.vit_heads,
        mlp_dim=config.vit_mlp_dim,
        patch_size=config.vit_patch_size,
        image_size=config.vit_image_size,
    )


def check_config(config: DivotTokenizerConfig) -> None:
    """Reject shapes the modules cannot be built with, naming the fields.

    Raises:
        ValueError: a width not divisible by its head count, or a ViT input size that is
            not a whole number of patches.
    """
    problems = [
        f"{width_name}={getattr(config, width_name)} is not divisible by {heads_name}={getattr(config, heads_name)}"
        for width_name, heads_name in (
            ("vit_width", "vit_heads"),
            ("temporal_width", "temporal_heads"),
            ("hidden_size", "st_heads"),
            ("vit_image_size", "vit_patch_size"),
        )
        if getattr(config, width_name) % getattr(config, heads_name)
    ]
    if problems:
        raise ValueError("invalid Divot tokenizer config: " + "; ".join(problems))


class DivotVideoEncoder(nn.Module):
    """Everything after the ViT: ViT patch tokens ``(B, F, P, C)`` -> features ``(B, N, D)``.

    Its ``state_dict`` names are exactly those of the release ``Divot_tokenizer.bin``
    (reference §9.1): ``temporal_encoder.*``, ``norm.*``, ``image_proj_model.*``.
    """

    def __init__(self, config: DivotTokenizerConfig) -> None:
        super().__init__()
        self.temporal_encoder = TemporalEncoder(
            input_dim=config.vit_width,
            output_dim=config.hidden_size,
            width=config.temporal_width,
            layers=config.temporal_layers,
            heads=config.temporal_heads,
            frames=config.frames_per_clip,
        )
        # Adaptive pooling windows overlap (e.g. 16 -> 5 uses 4-wide windows); as the reference.
        self.spatial_pool = nn.AdaptiveAvgPool2d((config.pool_size, config.pool_size))
        self.norm = LayerNorm6(config.hidden_size)
        self.image_proj_model = SpatioTemporalTransformer(
            dim=config.hidden_size,
            heads=config.st_heads,
            depth=config.st_layers,
            frames=config.frames_per_clip,
            tokens_per_frame=config.pool_size**2,
            resampler_depth=config.resampler_layers,
            resampler_heads=config.resampler_heads,
            resampler_dim_head=config.resampler_dim_head,
            num_queries=config.num_tokens,
            output_dim=config.feature_dim,
        )

    def forward(self, patches_bfpc: torch.Tensor) -> torch.Tensor:
        batch, _, num_patches, _ = patches_bfpc.shape
        grid = math.isqrt(num_patches)
        # One temporal sequence per (clip, spatial position).
        seqs_nfc = rearrange(patches_bfpc, "b f p c -> (b p) f c")
        seqs_nfd = self.temporal_encoder(seqs_nfc)
        maps_mdhw = rearrange(seqs_nfd, "(b h w) f d -> (b f) d h w", b=batch, h=grid, w=grid)
        pooled_mdhw = self.spatial_pool(maps_mdhw)
        tokens_btd = rearrange(pooled_mdhw, "(b f) d h w -> b (f h w) d", b=batch)  # frame-major
        return self.image_proj_model(self.norm(tokens_btd))

    def load_release_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load ``Divot_tokenizer.bin`` (or a ``save_pretrained`` copy) with strict checking.

        ``vit_model.*`` entries are skipped; every other key must match by name and shape.

        Raises:
            RuntimeError: missing, unexpected or mis-shaped keys (from ``load_state_dict``).
        """
        own = {name: tensor for name, tensor in state_dict.items() if not name.startswith(RELEASE_VIT_PREFIX)}
        self.load_state_dict(own, strict=True)


@register_video_tokenizer("divot")
class DivotTokenizer(VideoTokenizer):
    """The Divot video tokenizer: ``(B, 5, 3, H, W)`` frames in [-1, 1] -> ``(B, 64, 256)``.

    Args:
        config: architecture (and, for ``from_config``, weight paths).
        vision_model: the CLIP vision tower; a randomly initialised one when None.
        frame_encoder: False builds no ViT (``vit`` is None): for runs from a feature cache.

    Example:
        >>> tokenizer = build_video_tokenizer(cfg.video_tokenizer).to("cuda", torch.bfloat16)
        >>> feats_bnd = tokenizer.encode(frames_bfchw)  # (B, 64, 256)
    """

    config_class = DivotTokenizerConfig

    def __init__(
        self,
        config: DivotTokenizerConfig,
        vision_model: CLIPVisionModel | None = None,
        *,
        frame_encoder: bool = True,
    ) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        if frame_encoder and vision_model is None:
            vision_model = load_clip_vision(None, vit_config(config))
        self.vit = ClipVisionTower(vision_model) if frame_encoder else None
        self.encoder = DivotVideoEncoder(config)
        self.freeze()

    @classmethod
    def from_config(cls, config: DivotTokenizerConfig, frame_encoder: bool = True) -> DivotTokenizer:
        """Build from a config; ``vit_path`` and ``pretrained_path`` are loaded when set,
        and random weights are used for whatever is null (tiny test/demo tokenizers).
        ``frame_encoder=False``: no ViT (``vit_path`` is not read; ``for_cached_features``).
        A random-init ViT (``vit_path`` null: tiny test/demo tokenizers) is drawn even then
        and dropped: the encoder after it, and an LLM built after the tokenizer, take the
        same random values with or without the ViT (a run from a feature cache leaves it
        out, the export rebuilds it: both must agree on every random-init frozen weight)."""
        vision_model = None
        if frame_encoder or config.vit_path is None:
            vision_model = load_clip_vision(config.vit_path, vit_config(config))
        tokenizer = cls(config, vision_model if frame_encoder else None, frame_encoder=frame_encoder)
        if config.pretrained_path is not None:
            try:
                tokenizer.encoder.load_release_state_dict(load_weights_file(config.pretrained_path))
            except RuntimeError as err:
                raise ValueError(
                    f"{config.pretrained_path} does not fit the tokenizer config: {err}"
                ) from err
        return tokenizer

    @classmethod
    def for_cached_features(cls, config: DivotTokenizerConfig) -> DivotTokenizer:
        """Without the ViT: the encoder after it, loaded (or random-init) as ``from_config``."""
        return cls.from_config(config, frame_encoder=False)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DivotTokenizer:
        """Load a folder written by ``save_pretrained``."""
        path = Path(path)
        return cls.from_config(
            cls._saved_config(path, pretrained_path=str(path / ENCODER_WEIGHTS), vit_path=str(path / VIT_DIR))
        )

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer_config.json``, the encoder weights (release key names,
        safetensors) and the ViT as an HF folder under ``vit/``."""
        vit = self._built_vit()
        path = self._save_config(path, pretrained_path=None, vit_path=None)
        save_file({k: v.contiguous() for k, v in self.encoder.state_dict().items()}, path / ENCODER_WEIGHTS)
        vit.model.save_pretrained(path / VIT_DIR)

    frames_per_clip = config_value("frames_per_clip")
    num_tokens = config_value("num_tokens")
    feature_dim = config_value("feature_dim")
    input_size = config_value("input_size")

    @property
    def frame_encoder(self) -> ClipVisionTower | None:
        return self.vit

    def _built_vit(self) -> ClipVisionTower:
        if self.vit is None:
            raise RuntimeError(
                "this Divot tokenizer was built without its ViT (for_cached_features: a run from a "
                "feature cache): it cannot encode frames or be saved"
            )
        return self.vit

    def _encode(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.frame_patches(frames_bfchw))

    def frame_patches(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        """ViT patch tokens of every frame: ``(B, F, 3, H, W)`` -> ``(B, F, P, C)``.

        The ViT sees each frame on its own (frames meet only in the temporal encoder
        after it), so a still clip -- F identical frames, as images are sampled -- runs it
        on one frame whose tokens stand for all F: the same features for 1/F of the ViT.
        """
        vit = self._built_vit()
        batch, frames = frames_bfchw.shape[:2]
        encode_bf = torch.ones(batch, frames, dtype=torch.bool, device=frames_bfchw.device)
        if frames_bfchw.is_meta:  # no values to compare (FLOP counting, planning): every frame
            return vit(frames_bfchw.flatten(0, 1)).unflatten(0, (batch, frames))
        encode_bf[:, 1:] = ~still_clips(frames_bfchw)[:, None]  # a still: its first frame only
        patches_mpc = vit(frames_bfchw[encode_bf])  # (M, P, C), M = video frames + one per still
        row_bf = encode_bf.flatten().cumsum(0).view(batch, frames) - 1  # row of M of each encoded frame
        row_bf = torch.where(encode_bf, row_bf, row_bf[:, :1])  # a still's frames: its first frame's row
        return patches_mpc[row_bf]
