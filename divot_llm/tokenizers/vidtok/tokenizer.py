"""VidTok as a frozen video tokenizer (arch ``vidtok``; ``video_tokenizer=vidtok_*``).

The LLM-facing ``encode`` flattens the latent grid: a 17 x 256^2 clip of
``vidtok_kl_causal_488_4chn`` gives (5 x 32 x 32 = 5120 tokens, 4 channels). The latent
interface (``LatentVideoTokenizer``) encodes to and decodes from latents or FSQ indices
and reconstructs videos of any length.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from divot_llm.tokenizers.base import LatentVideoTokenizer, config_value
from divot_llm.tokenizers.registry import register_video_tokenizer
from divot_llm.tokenizers.vidtok.autoencoder import VIDTOK_WEIGHTS, VidTokAutoencoder, load_vidtok_weights
from divot_llm.tokenizers.vidtok.config import VidTokConfig, latent_frames


@register_video_tokenizer("vidtok")
class VidTokTokenizer(LatentVideoTokenizer):
    """Frozen VidTok: ``(B, F, 3, H, W)`` frames in [-1, 1] -> ``(B, T' h w, C)`` features.

    Args:
        config: architecture; ``from_config`` also loads ``pretrained_path``.

    Example:
        >>> tokenizer = build_video_tokenizer(cfg.video_tokenizer)  # vidtok_fsq_causal_488_262144
        >>> indices_bthw = tokenizer.encode_indices(frames_bfchw)  # 17 x 256^2 -> (B, 5, 32, 32)
        >>> frames_rec_bfchw = tokenizer.decode_indices(indices_bthw)
    """

    config_class = VidTokConfig

    def __init__(self, config: VidTokConfig) -> None:
        super().__init__()
        self.config = config
        self.autoencoder = VidTokAutoencoder(config)
        self.freeze()

    @classmethod
    def from_config(cls, config: VidTokConfig) -> VidTokTokenizer:
        """Build from a config; ``pretrained_path`` (a release ``.ckpt``/``.safetensors`` or a
        ``save_pretrained`` folder) is loaded strictly when set, random weights when null."""
        tokenizer = cls(config)
        if config.pretrained_path is not None:
            load_vidtok_weights(tokenizer.autoencoder, config.pretrained_path)
        return tokenizer

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> VidTokTokenizer:
        """Load a folder written by ``save_pretrained``."""
        return cls.from_config(cls._saved_config(path, pretrained_path=str(Path(path))))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``tokenizer_config.json`` and ``model.safetensors`` (the release's
        ``encoder.*`` / ``decoder.*`` names, so VidTok's own loader reads it too)."""
        folder = self._save_config(path, pretrained_path=None)
        state = {key: value.contiguous() for key, value in self.autoencoder.state_dict().items()}
        save_file(state, folder / VIDTOK_WEIGHTS)

    # ---------------------------------------------------------------------- shapes

    frames_per_clip = config_value("frames_per_clip")
    input_size = config_value("input_height")
    latent_channels = config_value("z_channels")
    is_causal = config_value("causal")
    temporal_factor = config_value("time_downsample_factor")

    @property
    def spatial_factor(self) -> int:
        return self.autoencoder.spatial_factor

    @property
    def levels(self) -> list[int] | None:
        return list(self.config.fsq_levels) if self.config.regularizer == "fsq" else None

    @property
    def codebook_size(self) -> int | None:
        return self.autoencoder.codebook_size

    @property
    def num_tokens(self) -> int:
        factor = self.spatial_factor
        grid = (self.config.input_height // factor) * (self.config.input_width // factor)
        return latent_frames(self.config, self.config.frames_per_clip) * grid

    @property
    def feature_dim(self) -> int:
        return self.config.z_channels

    # -------------------------------------------------------------------- encoding

    def _encode(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        latents_bcthw = self.encode_latents(frames_bfchw)
        return latents_bcthw.flatten(2).transpose(1, 2)  # (B, T' h w, C), time-major

    def _video(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        """Public frames -> the autoencoder's ``(B, 3, T, H, W)`` on its device and dtype."""
        if not isinstance(frames_bfchw, torch.Tensor) or frames_bfchw.ndim != 5 or frames_bfchw.shape[2] != 3:
            shape = (
                tuple(frames_bfchw.shape) if isinstance(frames_bfchw, torch.Tensor) else type(frames_bfchw)
            )
            raise ValueError(f"expected (B, F, 3, H, W) floating-point frames in [-1, 1], got {shape}")
        if not frames_bfchw.is_floating_point():
            raise ValueError(f"expected floating-point frames in [-1, 1], got dtype {frames_bfchw.dtype}")
        return frames_bfchw.to(device=self.device, dtype=self.dtype).transpose(1, 2)

    def encode_latents(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.autoencoder.encode(self._video(frames_bfchw))[0]

    def decode_latents(self, latents_bcthw: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            latents = latents_bcthw.to(device=self.device, dtype=self.dtype)
            return self.autoencoder.decode(latents).transpose(1, 2)

    def encode_indices(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.autoencoder.encode_indices(self._video(frames_bfchw))

    def decode_indices(self, indices_bthw: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.autoencoder.decode_indices(indices_bthw.to(self.device)).transpose(1, 2)

    def reconstruct(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.reconstruct(self._video(frames_bfchw)).transpose(1, 2)
