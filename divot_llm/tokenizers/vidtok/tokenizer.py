"""VidTok as a frozen video tokenizer (arch ``vidtok``; ``video_tokenizer=vidtok_*``).

The LLM-facing ``encode`` cuts the latent grid into ``llm_patch_size`` p x p patches
(``features``): a 17 x 128^2 clip of ``vidtok_kl_causal_488_4chn`` (5 x 16 x 16 latents)
gives 5 x 8 x 8 = 320 tokens of 4 x 2 x 2 = 16 features at p = 2 -- more than the LLM's
256 frame tokens when it reads one token per feature token (``model.resampler``: learned
queries read any number); p = 4 gives 80 tokens of 64. KL features are the latents
normalised per channel (``latent_mean`` / ``latent_std``, from ``divot-data
latent-stats``); FSQ features are the code digits. ``decode_features`` inverts that. The
latent interface (``LatentVideoTokenizer``) encodes to and decodes from latents or FSQ
indices and reconstructs videos of any length.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from divot_llm.tokenizers.base import LatentVideoTokenizer, config_value
from divot_llm.tokenizers.registry import register_video_tokenizer
from divot_llm.tokenizers.vidtok.autoencoder import VIDTOK_WEIGHTS, VidTokAutoencoder, load_vidtok_weights
from divot_llm.tokenizers.vidtok.config import VidTokConfig, check_llm_features, llm_grid
from divot_llm.tokenizers.vidtok.features import digits_index, index_digits, patchify, unpatchify


@register_video_tokenizer("vidtok")
class VidTokTokenizer(LatentVideoTokenizer):
    """Frozen VidTok: ``(B, F, 3, H, W)`` frames in [-1, 1] -> ``(B, N, D)`` features,
    N = T' (h/p) (w/p) tokens of D = C p p normalised latents or FSQ code digits.

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
        ``save_pretrained`` folder) is loaded strictly when set, random weights when null.
        Null latent statistics are taken from a ``save_pretrained`` folder that stores them
        (``divot-data latent-stats`` writes one); ``self.config`` then holds them."""
        tokenizer = cls(_with_saved_latent_stats(config))
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
        """N = T' (h/p) (w/p), any number: whether the LLM reads one token per feature
        token (at most its 256 frame tokens) or fewer learned queries is the LLM's setting
        (``divot_llm.model.llm_tokens_per_clip``, ``model.resampler``)."""
        t, h, w = llm_grid(self.config)
        return t * h * w

    def fewer_tokens_hint(self, max_tokens: int) -> str:
        """The smallest ``video_tokenizer.llm_patch_size`` that gives at most ``max_tokens``
        tokens per clip, or what else to change when none does."""
        t, h, w = llm_grid(self.config)
        p = self.config.llm_patch_size
        grid_h, grid_w = h * p, w * p
        fits = [
            q
            for q in range(p + 1, min(grid_h, grid_w) + 1)
            if grid_h % q == 0 and grid_w % q == 0 and t * (grid_h // q) * (grid_w // q) <= max_tokens
        ]
        where = f"{self.config.name}: latent grid {t} x {grid_h} x {grid_w}, llm_patch_size {p}"
        if not fits:
            return (
                f"use smaller frames (video_tokenizer.input_height / input_width) or fewer frames per clip, "
                f"and a larger video_tokenizer.llm_patch_size ({where})"
            )
        q = fits[0]
        return (
            f"set video_tokenizer.llm_patch_size={q} ({t * (grid_h // q) * (grid_w // q)} tokens of "
            f"{self.latent_channels * q**2} features; {where})"
        )

    @property
    def feature_dim(self) -> int:
        """D = C p p."""
        return self.config.z_channels * self.config.llm_patch_size**2

    @property
    def feature_levels(self) -> list[int] | None:
        """FSQ: the levels of each feature's digit (``(C, p, p)`` layout: each channel's L
        repeated p p times); KL: None."""
        if self.levels is None:
            return None
        return [level for level in self.levels for _ in range(self.config.llm_patch_size**2)]

    # -------------------------------------------------------------------- encoding

    def _encode(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        if self.levels is None:
            grid_bcthw = self._normalised(self.encode_latents(frames_bfchw))
        else:
            # integer digits as floats: exact in bf16 / fp16 (L <= 256)
            grid_bcthw = index_digits(self.encode_indices(frames_bfchw), self.levels).to(self.dtype)
        return patchify(grid_bcthw, self.config.llm_patch_size)

    def decode_features(self, feats_bnd: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` features in ``encode``'s layout -> ``(B, F, 3, H, W)`` frames
        (unclamped): KL features de-normalised, FSQ digits rounded and clamped to their
        levels (generated ones may be off the grid)."""
        if feats_bnd.ndim != 3 or feats_bnd.shape[1:] != (self.num_tokens, self.feature_dim):
            raise ValueError(
                f"expected (B, N={self.num_tokens}, D={self.feature_dim}) features, got shape "
                f"{tuple(feats_bnd.shape)}"
            )
        grid_bcthw = unpatchify(feats_bnd.to(self.device), llm_grid(self.config), self.config.llm_patch_size)
        if self.levels is None:
            return self.decode_latents(self._denormalised(grid_bcthw))
        return self.decode_indices(digits_index(grid_bcthw, self.levels))

    def _latent_stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(C, 1, 1, 1)`` fp32 mean and std, or None when the features are not normalised."""
        if self.config.latent_mean is None:
            return None
        mean_c, std_c = (
            torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1, 1)
            for values in (self.config.latent_mean, self.config.latent_std)
        )
        return mean_c, std_c

    def _normalised(self, latents_bcthw: torch.Tensor) -> torch.Tensor:
        stats = self._latent_stats(latents_bcthw.device)
        if stats is None:
            return latents_bcthw
        mean_c, std_c = stats
        return ((latents_bcthw.float() - mean_c) / std_c).to(latents_bcthw.dtype)

    def _denormalised(self, feats_bcthw: torch.Tensor) -> torch.Tensor:
        stats = self._latent_stats(feats_bcthw.device)
        if stats is None:
            return feats_bcthw
        mean_c, std_c = stats
        return feats_bcthw.float() * std_c + mean_c

    def set_latent_stats(self, mean: list[float], std: list[float]) -> None:
        """Normalise ``encode``'s features with these per-channel statistics from now on
        (``save_pretrained`` then stores them: ``divot-data latent-stats``)."""
        config = dataclasses.replace(self.config, latent_mean=list(mean), latent_std=list(std))
        check_llm_features(config)
        self.config = config

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


def _with_saved_latent_stats(config: VidTokConfig) -> VidTokConfig:
    """``config`` with the latent statistics a ``save_pretrained`` folder at
    ``pretrained_path`` stores, where the config leaves them null."""
    if config.latent_mean is not None or config.latent_std is not None or config.pretrained_path is None:
        return config
    saved = Path(config.pretrained_path) / VidTokTokenizer.config_file
    if not saved.is_file():
        return config
    fields = json.loads(saved.read_text())
    return dataclasses.replace(
        config, latent_mean=fields.get("latent_mean"), latent_std=fields.get("latent_std")
    )
