"""The VidTok tokenizer's config (``conf/video_tokenizer/vidtok*.yaml`` merge onto it).

One dataclass describes the autoencoder (architecture, regularizer, frame rules, the
regularizer's training losses) and the frozen tokenizer built from it. Defaults are the
released ``vidtok_kl_causal_488_4chn`` (seed-systems §a.1).
"""

from __future__ import annotations

import dataclasses
import math

from omegaconf import MISSING

from divot_llm.config.schema import PathKind, checked
from divot_llm.tokenizers.registry import register_video_tokenizer_config


@register_video_tokenizer_config("vidtok")
@dataclasses.dataclass
class VidTokConfig:
    """A VidTok v1.0 autoencoder: 2D+1D spatio-temporal encoder and decoder, KL or FSQ."""

    name: str = "vidtok"
    arch: str = "vidtok"  # implementation: divot_llm/tokenizers/vidtok/ (registry key)
    # a released .ckpt / .safetensors, or a save_pretrained folder; null = random init
    pretrained_path: str | None = checked(MISSING, path=PathKind.file_or_folder)
    causal: bool = True  # model_3dcausal (first frame alone, 1 + k*tf frames) or model_3dnoncausal
    regularizer: str = checked("kl", choices=("kl", "fsq"))
    z_channels: int = checked(4, ge=1)  # latent channels C (FSQ: len(fsq_levels))
    fsq_levels: list[int] = checked(default_factory=lambda: [8, 8, 8, 8, 8, 8], ge=3)  # FSQ only
    ch: int = checked(128, ge=1)  # width of the first level
    ch_mult: list[int] = checked(default_factory=lambda: [1, 2, 4, 4], ge=1)  # width per level
    num_res_blocks: int = checked(2, ge=1)  # per encoder level (the decoder has one more)
    time_downsample_factor: int = checked(4, ge=1)  # tf: 2 ** (number of temporal levels)
    # Levels that resample (null = the release's defaults: spatial at every level but the
    # last, temporal at levels n-2 and n-3 down and 1, 2 up). Causal models only.
    spatial_ds: list[int] | None = None
    tempo_ds: list[int] | None = None
    spatial_us: list[int] | None = None
    tempo_us: list[int] | None = None
    norm_type: str = checked("layernorm", choices=("layernorm", "groupnorm"))
    input_height: int = checked(256, ge=1)  # frame size the data pipeline produces
    input_width: int = checked(256, ge=1)
    frames_per_clip: int = checked(17, ge=1)  # F of encode(): 1 + k*tf causal, k*tf non-causal
    chunk_frames: int = checked(16, ge=1)  # reconstruct(): chunks of this (+1 causal) frames
    sample: bool = True  # KL training samples the posterior (frozen use always takes the mode)
    # FSQ training losses (aux_loss = entropy * annealed weight + commitment)
    entropy_loss_weight: float = checked(0.1, ge=0)
    entropy_loss_annealing_steps: int = checked(2000, ge=0)
    entropy_loss_annealing_factor: float = checked(3.0, ge=0)  # start weight = factor * weight
    commitment_loss_weight: float = checked(0.25, ge=0)
    entropy_inv_temperature: float = checked(100.0, gt=0)
    diversity_gamma: float = checked(1.0, ge=0)
    # What ``encode`` hands the LLM (docs/vidtok.md, "The LLM over VidTok features"): p x p
    # latent positions per token, N = T' (h/p) (w/p) tokens of D = C p p features (N <= 256)
    llm_patch_size: int = checked(1, ge=1)
    # Per-channel statistics of the raw KL latents (length C; `divot-data latent-stats`):
    # with both set, features are (latent - mean) / std. Null = none, or those stored in the
    # save_pretrained folder pretrained_path names. FSQ tokenizers leave them null.
    latent_mean: list[float] | None = None
    latent_std: list[float] | None = checked(None, gt=0)


@dataclasses.dataclass(frozen=True)
class Levels:
    """Which levels resample. ``tempo_ds`` / ``tempo_us`` hold the temporal steps that run
    (those at a spatial level); ``tempo_us_built`` every level with a temporal upsampler
    module (the release builds one wherever ``tempo_us`` lists a level)."""

    spatial_ds: tuple[int, ...]
    tempo_ds: tuple[int, ...]
    spatial_us: tuple[int, ...]
    tempo_us: tuple[int, ...]
    tempo_us_built: tuple[int, ...]


def resolved_levels(config: VidTokConfig) -> Levels:
    n = len(config.ch_mult)
    spatial_ds = _listed(config.spatial_ds, range(n - 1), n)
    spatial_us = _listed(config.spatial_us, range(1, n), n)
    tempo_ds = tuple(i for i in _listed(config.tempo_ds, (n - 2, n - 3), n) if i in spatial_ds)
    tempo_us_built = _listed(config.tempo_us, (1, 2), n)
    return Levels(
        spatial_ds=spatial_ds,
        tempo_ds=tempo_ds,
        spatial_us=spatial_us,
        tempo_us=tuple(i for i in tempo_us_built if i in spatial_us),
        tempo_us_built=tempo_us_built,
    )


def _listed(levels: list[int] | None, default, n: int) -> tuple[int, ...]:
    return tuple(sorted({i for i in (default if levels is None else levels) if 0 <= i < n}))


def spatial_factor(config: VidTokConfig) -> int:
    return 2 ** len(resolved_levels(config).spatial_ds)


def codebook_size(config: VidTokConfig) -> int | None:
    return math.prod(config.fsq_levels) if config.regularizer == "fsq" else None


def latent_frames(config: VidTokConfig, num_frames: int) -> int:
    """T' of a clip of ``num_frames`` frames that passes ``check_num_frames``."""
    tf = config.time_downsample_factor
    return (num_frames - 1) // tf + 1 if config.causal else num_frames // tf


def check_config(config: VidTokConfig) -> None:
    """Raise ValueError for a config the networks cannot build as described."""
    levels = resolved_levels(config)
    tf = config.time_downsample_factor
    if not config.causal and any(
        value is not None
        for value in (config.spatial_ds, config.tempo_ds, config.spatial_us, config.tempo_us)
    ):
        raise ValueError(
            "spatial_ds/tempo_ds/spatial_us/tempo_us apply to causal VidTok models only (leave null)"
        )
    if 2 ** len(levels.tempo_ds) != tf or 2 ** len(levels.tempo_us) != tf:
        raise ValueError(
            f"time_downsample_factor {tf} does not match the temporal levels: {len(levels.tempo_ds)} down "
            f"{levels.tempo_ds}, {len(levels.tempo_us)} up {levels.tempo_us} (ch_mult {config.ch_mult})"
        )
    if len(levels.spatial_ds) != len(levels.spatial_us):
        raise ValueError(
            f"spatial_ds {levels.spatial_ds} and spatial_us {levels.spatial_us} differ in length"
        )
    if config.regularizer == "fsq" and config.z_channels != len(config.fsq_levels):
        raise ValueError(
            f"FSQ needs z_channels == len(fsq_levels) ({len(config.fsq_levels)}), got {config.z_channels}"
        )
    if config.norm_type == "groupnorm" and any((config.ch * m) % 32 for m in config.ch_mult):
        raise ValueError(
            "groupnorm (32 groups) needs every level width ch * ch_mult[i] to be a multiple of 32"
        )
    frames_rule = (config.frames_per_clip - 1) % tf if config.causal else config.frames_per_clip % tf
    if frames_rule:
        raise ValueError(f"frames_per_clip {config.frames_per_clip}: {frame_rule(config)}")
    if config.chunk_frames % tf:
        raise ValueError(
            f"chunk_frames {config.chunk_frames} must be a multiple of time_downsample_factor {tf}"
        )
    factor = spatial_factor(config)
    if config.input_height % factor or config.input_width % factor:
        raise ValueError(
            f"input_height x input_width {config.input_height}x{config.input_width} must be multiples of the "
            f"spatial factor {factor}"
        )
    check_llm_features(config)


def check_llm_features(config: VidTokConfig) -> None:
    """Raise ValueError for LLM-feature settings (patch size, latent statistics) that do not
    fit the latent grid or the bottleneck."""
    factor, p = spatial_factor(config), config.llm_patch_size
    grid_h, grid_w = config.input_height // factor, config.input_width // factor
    if grid_h % p or grid_w % p:
        raise ValueError(
            f"video_tokenizer.llm_patch_size={p} must divide the latent grid {grid_h}x{grid_w} "
            f"(input {config.input_height}x{config.input_width} / spatial factor {factor})"
        )
    stats = {"latent_mean": config.latent_mean, "latent_std": config.latent_std}
    given = [name for name, value in stats.items() if value is not None]
    if given and config.regularizer == "fsq":
        raise ValueError(
            f"video_tokenizer.{given[0]}: an FSQ tokenizer hands the LLM code digits, which are not "
            "normalised (leave latent_mean and latent_std null)"
        )
    if len(given) == 1:
        raise ValueError(f"video_tokenizer.{given[0]} is set without the other of latent_mean / latent_std")
    for name, value in stats.items():
        if value is not None and len(value) != config.z_channels:
            raise ValueError(
                f"video_tokenizer.{name} has {len(value)} values; the latents have z_channels={config.z_channels}"
            )


def llm_grid(config: VidTokConfig) -> tuple[int, int, int]:
    """``(T', h / p, w / p)``: the LLM tokens of a clip along time, rows and columns."""
    factor, p = spatial_factor(config), config.llm_patch_size
    return (
        latent_frames(config, config.frames_per_clip),
        config.input_height // factor // p,
        config.input_width // factor // p,
    )


def frame_rule(config: VidTokConfig) -> str:
    """The clip lengths a model encodes and decodes back unchanged, in words."""
    tf = config.time_downsample_factor
    if config.causal:
        return f"a causal VidTok v1.0 model takes 1 + k*{tf} frames (1, {1 + tf}, {1 + 2 * tf}, ...)"
    return f"a non-causal VidTok model takes a multiple of {tf} frames ({tf}, {2 * tf}, ...)"
