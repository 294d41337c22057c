"""The Divot de-tokenizer: 64x256 features -> 16 frames of 256^2 through video diffusion (reference §4).

Pipeline for B feature sets (real shapes in brackets):

1. ``image_proj_model`` (Resampler_DC, the tokenizer's Perceiver resampler class):
   ``(B, N [64], D [256])`` -> context ``(B, S [125], C [1024])``.
2. DDIM over latents ``(B, 4, T [16], h [32], w [32])`` with the 3D UNet
   (``diffusion_model``), v-prediction, guidance against the context of the zero-clip
   features.
3. ``first_stage_model`` (SD VAE) decodes each frame: ``(B, T, 3, H [256], W [256])``.

Training (``loss``): the VAE latents of the clip are noised at a random timestep and the
UNet regresses v, conditioned on the clip's features (or, with probability
``cond_drop_prob``, on the zero-clip features, so guidance has an unconditional model).

Weights: ``Divot_detokenizer_stage{1,2}.bin`` loads strictly (``load_release_state_dict``):
``diffusion_model.*`` and ``image_proj_model.*`` by name, ``first_stage_model.*`` through
the LDM -> diffusers VAE map; the reference's schedule buffers and ``video_tokenizer.*``
copy are skipped. ``save_pretrained`` writes the same layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from safetensors.torch import save_file

from divot_llm.detokenizers.base import VideoDetokenizer, random_draw, zero_clip_features
from divot_llm.detokenizers.dynamicrafter_config import DynamiCrafterConfig
from divot_llm.detokenizers.registry import register_video_detokenizer
from divot_llm.detokenizers.sampler import ddim_sample, guided_prediction, make_scheduler
from divot_llm.detokenizers.unet import DynamiCrafterUNet
from divot_llm.detokenizers.vae import (
    LDM_PREFIX,
    build_vae,
    diffusers_to_ldm_vae,
    ldm_to_diffusers_vae,
    load_vae_weights,
    vae_downsample_factor,
)
from divot_llm.tokenizers.base import VideoTokenizer, config_value
from divot_llm.tokenizers.clip_vision import load_weights_file
from divot_llm.tokenizers.divot_layers import PerceiverResampler

# save_pretrained layout (+ VideoDetokenizer.config_file)
WEIGHTS_FILE = "detokenizer.safetensors"  # release key names (+ null_features)

NULL_FEATURES_KEY = "null_features"
# In the release file but not parameters here: the reference wrapper's DDPM buffers
# (recomputed from the config) and, possibly, a copy of the tokenizer.
RELEASE_SCHEDULE_BUFFERS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    }
)
RELEASE_TOKENIZER_PREFIX = "video_tokenizer."

VAE_CHUNK_FRAMES = 16  # frames per VAE call: bounds activation memory at 256^2


def check_config(config: DynamiCrafterConfig) -> None:
    """Reject shapes the modules cannot be built with, naming the fields.

    Raises:
        ValueError: widths that are not multiples of 32 (GroupNorm groups) or of the head
            width, a text/image split outside the context, or an image size the VAE and
            UNet cannot halve often enough.
    """
    unet_widths = [config.model_channels * m for m in config.channel_mult]
    vae_widths = [config.vae_channels * m for m in config.vae_channel_mult]
    latent = config.image_size // vae_downsample_factor(config)
    problems = []
    if any(w % 32 for w in unet_widths + vae_widths):
        problems.append(f"UNet widths {unet_widths} and VAE widths {vae_widths} must be multiples of 32")
    if any(w % config.num_head_channels for w in unet_widths):
        problems.append(
            f"UNet widths {unet_widths} must be multiples of num_head_channels={config.num_head_channels}"
        )
    if config.vae_posterior not in ("sample", "mean"):
        problems.append(f"vae_posterior={config.vae_posterior!r} must be 'sample' or 'mean'")
    if not 0 < config.text_context_len < config.condition_tokens:
        problems.append(
            f"text_context_len={config.text_context_len} must split condition_tokens={config.condition_tokens}"
        )
    if config.image_size % vae_downsample_factor(config) or latent % 2 ** (len(config.channel_mult) - 1):
        problems.append(
            f"image_size={config.image_size} must give latents divisible by the UNet's downsampling"
        )
    if problems:
        raise ValueError("invalid DynamiCrafter config: " + "; ".join(problems))


@register_video_detokenizer("dynamicrafter")
class DynamiCrafterDetokenizer(VideoDetokenizer):
    """Divot's DynamiCrafter-based video de-tokenizer.

    Args:
        config: architecture, schedule and sampler settings (weights are loaded by
            ``from_config``).

    Example:
        >>> tokenizer = build_video_tokenizer(cfg.video_tokenizer)
        >>> detok = build_video_detokenizer(cfg.detokenizer, tokenizer=tokenizer).to("cuda")
        >>> video_bfchw = detok.decode(feats_bnd, seed=42)  # (B, 16, 3, 256, 256) in [-1, 1]
    """

    config_class = DynamiCrafterConfig

    def __init__(self, config: DynamiCrafterConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        self.diffusion_model = DynamiCrafterUNet(
            in_channels=config.latent_channels,
            out_channels=config.latent_channels,
            model_channels=config.model_channels,
            channel_mult=config.channel_mult,
            num_res_blocks=config.num_res_blocks,
            attention_resolutions=config.attention_resolutions,
            num_head_channels=config.num_head_channels,
            transformer_depth=config.transformer_depth,
            context_dim=config.context_dim,
            text_context_len=config.text_context_len,
            dropout=config.dropout,
            default_fs=config.frame_stride,
        )
        self.diffusion_model.gradient_checkpointing = config.gradient_checkpointing
        self.first_stage_model = build_vae(config)
        self.image_proj_model = PerceiverResampler(
            dim=config.context_dim,
            depth=config.condition_layers,
            dim_head=config.condition_dim_head,
            heads=config.condition_heads,
            num_queries=config.condition_tokens,
            embedding_dim=config.feature_dim,
            output_dim=config.context_dim,
        )
        self.register_buffer(NULL_FEATURES_KEY, None)
        self.scheduler = make_scheduler(config)
        # The VAE is never trained here (frozen in the reference recipes).
        self.first_stage_model.requires_grad_(False)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_config(
        cls, config: DynamiCrafterConfig, tokenizer: VideoTokenizer | None = None
    ) -> DynamiCrafterDetokenizer:
        """Build from a config: ``vae_path`` then ``pretrained_path`` are loaded when set
        (random weights for what is null); a tokenizer sets the null features.

        Raises:
            ValueError: a weights file that does not fit the config.
        """
        detok = cls(config)
        if config.vae_path is not None:
            try:
                load_vae_weights(detok.first_stage_model, config.vae_path, config)
            except RuntimeError as err:
                raise ValueError(f"{config.vae_path} does not fit the VAE config: {err}") from err
        if config.pretrained_path is not None:
            try:
                detok.load_release_state_dict(load_weights_file(config.pretrained_path))
            except RuntimeError as err:
                raise ValueError(
                    f"{config.pretrained_path} does not fit the de-tokenizer config: {err}"
                ) from err
        if tokenizer is not None:
            detok.set_null_features(zero_clip_features(tokenizer))
        return detok

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DynamiCrafterDetokenizer:
        """Load a folder written by ``save_pretrained`` (null features included)."""
        path = Path(path)
        return cls.from_config(
            cls._saved_config(path, pretrained_path=str(path / WEIGHTS_FILE), vae_path=None)
        )

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``detokenizer_config.json`` and the weights with the release key names
        (safetensors), plus ``null_features`` when set."""
        path = self._save_config(path, pretrained_path=None, vae_path=None)
        save_file(
            {k: v.detach().contiguous() for k, v in self.release_state_dict().items()}, path / WEIGHTS_FILE
        )

    def release_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights under the release key names (VAE in the LDM layout)."""
        state = {}
        for name in ("diffusion_model", "image_proj_model"):
            state |= {f"{name}.{k}": v for k, v in getattr(self, name).state_dict().items()}
        vae = diffusers_to_ldm_vae(self.first_stage_model.state_dict(), len(self.config.vae_channel_mult))
        state |= {LDM_PREFIX + k: v for k, v in vae.items()}
        if self.null_features is not None:
            state[NULL_FEATURES_KEY] = self.null_features
        return state

    def load_release_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load ``Divot_detokenizer_stage{1,2}.bin`` (or a ``save_pretrained`` copy) strictly.

        Schedule buffers and ``video_tokenizer.*`` are skipped; every other key must match
        by name and shape. ``null_features`` is taken when present (the release file has
        none: then the current ones, if any, are kept).

        Raises:
            RuntimeError: missing, unexpected or mis-shaped keys (from ``load_state_dict``).
        """
        own, vae = {}, {}
        for key, tensor in state_dict.items():
            if key in RELEASE_SCHEDULE_BUFFERS or key.startswith(RELEASE_TOKENIZER_PREFIX):
                continue
            (vae if key.startswith(LDM_PREFIX) else own)[key] = tensor
        converted = ldm_to_diffusers_vae(vae, self.config)
        own |= {f"first_stage_model.{k}": v for k, v in converted.items()}
        if NULL_FEATURES_KEY not in own and self.null_features is not None:
            own[NULL_FEATURES_KEY] = self.null_features
        self.load_state_dict(own, strict=True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # null_features is a buffer that may be unset (None) or have another token count;
        # a state dict carrying it (a saved or checkpointed de-tokenizer) sets it.
        key = prefix + NULL_FEATURES_KEY
        if key in state_dict and (
            self.null_features is None or self.null_features.shape != state_dict[key].shape
        ):
            self.null_features = torch.empty(state_dict[key].shape, device=self.device, dtype=self.dtype)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------------- shapes

    num_frames = config_value("num_frames")
    image_size = config_value("image_size")
    feature_dim = config_value("feature_dim")
    fps = config_value("fps")

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """``(C, T, h, w)`` of one clip's latents."""
        side = self.config.image_size // vae_downsample_factor(self.config)
        return (self.config.latent_channels, self.config.num_frames, side, side)

    # ----------------------------------------------------------------------- modes

    def train(self, mode: bool = True) -> DynamiCrafterDetokenizer:
        super().train(mode)
        self.first_stage_model.train(False)  # frozen VAE: always eval
        return self

    def set_trainable(self, diffusion_model: bool = True, image_proj_model: bool = True) -> None:
        """Choose what trains (the VAE never does): both for tokenizer co-training and
        stage 1; either for the adaptation stage."""
        self.diffusion_model.requires_grad_(diffusion_model)
        self.image_proj_model.requires_grad_(image_proj_model)

    # ---------------------------------------------------------------- VAE in/out

    def encode_latents(
        self, video_bfchw: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Scaled VAE posterior samples (or means, ``vae_posterior``) of clips:
        ``(B, F, 3, H, W)`` -> ``(B, C, F, h, w)``."""
        batch = video_bfchw.shape[0]
        frames = rearrange(video_bfchw, "b f c h w -> (b f) c h w").to(self.dtype)
        with torch.no_grad():
            posteriors = [self.first_stage_model.encode(chunk).latent_dist for chunk in frames.split(VAE_CHUNK_FRAMES)]
            if self.config.vae_posterior == "mean":
                latents = [posterior.mean for posterior in posteriors]
            else:
                latents = [posterior.sample(generator) for posterior in posteriors]
        latents_nchw = torch.cat(latents) * self.config.scale_factor
        return rearrange(latents_nchw, "(b f) c h w -> b c f h w", b=batch)

    def decode_latents(self, latents_bcthw: torch.Tensor) -> torch.Tensor:
        """Per-frame VAE decode: ``(B, C, T, h, w)`` -> ``(B, T, 3, H, W)`` (unclamped)."""
        batch = latents_bcthw.shape[0]
        latents_nchw = rearrange(latents_bcthw, "b c t h w -> (b t) c h w") / self.config.scale_factor
        frames = [
            self.first_stage_model.decode(chunk).sample for chunk in latents_nchw.split(VAE_CHUNK_FRAMES)
        ]
        return rearrange(torch.cat(frames), "(b t) c h w -> b t c h w", b=batch)

    # -------------------------------------------------------------------- sampling

    def predict_velocity(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        uncond_context: torch.Tensor | None,
        guidance: float,
        guidance_rescale: float,
    ) -> torch.Tensor:
        """The (guided) v prediction for one sampler step.

        With ``guidance == 1`` (or no unconditional context) only the conditional branch
        runs, as in the reference; otherwise both run as one doubled batch.
        """
        fs = torch.full((x_t.shape[0],), self.config.frame_stride, device=x_t.device)
        if uncond_context is None or guidance == 1:
            return self.diffusion_model(x_t, t, context, fs)
        v_cond, v_uncond = self.diffusion_model(
            torch.cat([x_t, x_t]), t, torch.cat([context, uncond_context]), torch.cat([fs, fs])
        ).chunk(2)
        return guided_prediction(v_cond, v_uncond, guidance, guidance_rescale)

    def _decode(
        self,
        features_bnd: torch.Tensor,
        steps: int | None,
        guidance: float | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        steps = self.config.ddim_steps if steps is None else steps
        guidance = self.config.guidance_scale if guidance is None else guidance
        context = self.image_proj_model(features_bnd)
        uncond_context = (
            None if guidance == 1 else self.image_proj_model(self.null_features_like(features_bnd))
        )
        latents = ddim_sample(
            lambda x_t, t: self.predict_velocity(
                x_t, t, context, uncond_context, guidance, self.config.guidance_rescale
            ),
            make_scheduler(self.config),  # a fresh one: set_timesteps mutates it
            (features_bnd.shape[0], *self.latent_shape),
            steps,
            self.config.ddim_eta,
            generator,
            self.device,
            self.dtype,
        )
        return self.decode_latents(latents)

    # -------------------------------------------------------------------- training

    def loss(
        self,
        video: torch.Tensor,
        features: torch.Tensor,
        cond_drop_prob: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """v-prediction MSE on the clip's VAE latents (see ``VideoDetokenizer.loss``).

        Raises:
            ValueError: bad feature shape, or clip size/length other than the config's.
        """
        self._check_clips(video, features)
        batch, device = video.shape[0], self.device
        p_drop = self.config.cond_drop_prob if cond_drop_prob is None else cond_drop_prob
        draw = random_draw(generator, device)

        latents = self.encode_latents(video.to(device), generator)
        features = features.to(device=device, dtype=self.dtype)
        if p_drop > 0:
            drop_b = draw(torch.rand, batch) < p_drop
            features = torch.where(drop_b[:, None, None], self.null_features_like(features), features)
        timesteps_b = draw(torch.randint, 0, self.config.num_train_timesteps, (batch,))
        noise = draw(torch.randn, latents.shape).to(latents.dtype)
        x_t = self.scheduler.add_noise(latents, noise, timesteps_b)
        target_v = self.scheduler.get_velocity(latents, noise, timesteps_b)
        fs = torch.full((batch,), self.config.frame_stride, device=device)
        pred_v = self.diffusion_model(x_t, timesteps_b, self.image_proj_model(features), fs)
        return F.mse_loss(pred_v.float(), target_v.float())

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, frames={self.num_frames}, size={self.image_size}"
