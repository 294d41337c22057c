"""Video-LaVIT's motion-conditioned video de-tokenizer (arch ``lavit``; ``motion_detokenizer=lavit``).

A keyframe ``(B, 3, H, W)`` in [-1, 1] and a motion field ``(B, 2, F, h, w)`` (the motion
tokenizer's units: ``data.motion`` fields, or ``motion_tokenizer.decode(codes)``) become a
clip ``(B, F, 3, H, W)`` in [-1, 1], as the release's ``reconstruct_from_token`` does:

1. the field is bicubic-resized to the latent grid ``(H/8, W/8)`` and scaled by
   ``condition_scale`` (1/10: the motion tokenizer's ``detokenizer_condition``);
2. ``MotionConditionEncoder`` reads it bicubic-resized to 16 x 16: ``(B, F, 256, 1024)``,
   the UNet's cross-attention context (``lavit_layers.MotionUNet``);
3. the keyframe plus ``noise_aug_strength`` Gaussian noise goes through the VAE encoder
   (the posterior's mode, unscaled, as SVD) and is repeated over the F frames;
4. Euler sampling (``EulerDiscreteScheduler``, ``steps``) of ``(B, F, 4, H/8, W/8)`` latents:
   the UNet reads 10 channels (4 noisy latents, 4 keyframe latents, 2 motion channels) and
   ``added_time_ids = [fps, motion_bucket_id, noise_aug_strength]``; classifier-free guidance
   per frame, its scale rising linearly from ``min_guidance`` (frame 0) to ``max_guidance``
   (last frame), the unconditional branch with the motion context, the motion channels and
   the keyframe latents all zero;
5. the temporal-decoder VAE decodes ``decode_chunk_size`` frames at a time.

Module names are the release's: the state dict is ``unet.*``, ``motion_encoder.*``, ``vae.*``
(upstream's ``VideoDetokenizer`` less its motion tokenizer). The release's ``video_detokenizer/``
folder loads strictly (``unet/`` holds the UNet under diffusers' names plus ``motion_encoder.*``),
and ``video_3d_unet.bin`` (``unet.*`` + ``motion_encoder.*``) over it (``unet_weights``).

Training (``loss``; stage ``lavit_detok``) is not in the release; it follows diffusers' SVD
fine-tuning recipe (EDM preconditioning, which is what the Euler scheduler's
``v_prediction`` with continuous timesteps samples): log-normal sigmas
(``p_mean``, ``p_std``), inputs scaled by ``1/sqrt(sigma^2+1)``, the UNet's output turned into
the denoised latents ``c_skip x + c_out F``, MSE weighted by ``(sigma^2+1)/sigma^2``; the
keyframe is the clip's frame 0; ``uncond_prob`` of the clips train the unconditional branch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler
from safetensors.torch import load_file, save_file

from divot_llm.detokenizers.base import random_draw
from divot_llm.detokenizers.motion.lavit_config import LaVITVideoDetokenizerConfig, check_config, vae_factor
from divot_llm.detokenizers.motion.lavit_layers import CONDITION_GRID, MotionConditionEncoder, MotionUNet
from divot_llm.detokenizers.motion.registry import register_motion_detokenizer
from divot_llm.layout import MOTION_DETOKENIZER_CONFIG
from divot_llm.tokenizers.base import PretrainedComponent, config_value, state_dict_mismatch
from divot_llm.tokenizers.motion.lavit import motion_condition, read_state_dict

UNET_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")  # in unet/
ENCODER_PREFIX = "motion_encoder."  # the motion encoder's keys in the unet/ weights file
# SVD's scheduler (what the release's scheduler/ folder holds): EDM sigmas in [0.002, 700]
# with Karras spacing, v-prediction, continuous timesteps 0.25 log(sigma)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    interpolation_type="linear",
    use_karras_sigmas=True,
    sigma_min=0.002,
    sigma_max=700.0,
    timestep_spacing="leading",
    timestep_type="continuous",
    steps_offset=1,
)


def unet_arguments(config: LaVITVideoDetokenizerConfig) -> dict:
    """diffusers ``UNetSpatioTemporalConditionModel`` arguments: cross-attention blocks in
    every level but the deepest (the release's layout)."""
    levels = len(config.block_out_channels)
    down = ["CrossAttnDownBlockSpatioTemporal"] * (levels - 1) + ["DownBlockSpatioTemporal"]
    up = ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * (levels - 1)
    return dict(
        in_channels=2 * config.latent_channels + 2,
        out_channels=config.latent_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(config.block_out_channels),
        addition_time_embed_dim=config.addition_time_embed_dim,
        projection_class_embeddings_input_dim=3 * config.addition_time_embed_dim,
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.cross_attention_dim,
        num_attention_heads=tuple(config.num_attention_heads),
        num_frames=config.unet_num_frames,
    )


def vae_arguments(config: LaVITVideoDetokenizerConfig) -> dict:
    """diffusers ``AutoencoderKLTemporalDecoder`` arguments."""
    return dict(
        block_out_channels=tuple(config.vae_block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_block_out_channels),
        layers_per_block=config.vae_layers_per_block,
        latent_channels=config.latent_channels,
        scaling_factor=config.scaling_factor,
    )


def guidance_scales(batch: int, frames: int, low: float, high: float) -> torch.Tensor:
    """``(B, F, 1, 1, 1)`` classifier-free guidance scales: linear from ``low`` at frame 0
    to ``high`` at the last frame, the same for every clip."""
    return torch.linspace(low, high, frames).repeat(batch, 1)[:, :, None, None, None]


@register_motion_detokenizer("lavit")
class LaVITVideoDetokenizer(PretrainedComponent):
    """Keyframe ``(B, 3, H, W)`` + motion ``(B, 2, F, h, w)`` -> clip ``(B, F, 3, H, W)``.

    Example:
        >>> detok = build_motion_detokenizer(cfg.motion_detokenizer)  # motion_detokenizer=lavit_tiny
        >>> clip_bfchw = detok.decode(keyframe_b3hw, motion_tokenizer.decode(codes_bn), steps=25)
    """

    config_class = LaVITVideoDetokenizerConfig
    config_file = MOTION_DETOKENIZER_CONFIG

    def __init__(self, config: LaVITVideoDetokenizerConfig) -> None:
        super().__init__()
        check_config(config)
        self.config = config
        self.unet = MotionUNet(**unet_arguments(config))
        self.motion_encoder = MotionConditionEncoder(
            config.encoder_dim,
            config.encoder_heads,
            config.encoder_depth,
            config.encoder_mlp_ratio,
            config.cross_attention_dim,
        )
        self.vae = AutoencoderKLTemporalDecoder(**vae_arguments(config))
        self.vae.requires_grad_(False)  # frozen in training too
        with torch.device("cpu"):  # its tables are plain CPU tensors, also when the modules are on meta
            self.scheduler = EulerDiscreteScheduler(**SCHEDULER_CONFIG)

    # ------------------------------------------------------------- build / save / load

    @classmethod
    def from_config(cls, config: LaVITVideoDetokenizerConfig) -> LaVITVideoDetokenizer:
        """Build from a config; ``pretrained_path`` (the release's ``video_detokenizer/`` or a
        ``save_pretrained`` folder) then ``unet_weights`` (``video_3d_unet.bin``) are loaded
        strictly when set, random weights otherwise."""
        model = cls(config)
        if config.pretrained_path is not None:
            model.load_folder(config.pretrained_path)
        if config.unet_weights is not None:
            strict_load(
                model, read_state_dict(config.unet_weights), ("unet.", ENCODER_PREFIX), config.unet_weights
            )
        return model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LaVITVideoDetokenizer:
        """Load a folder written by ``save_pretrained``."""
        return cls.from_config(cls._saved_config(path, pretrained_path=str(Path(path)), unet_weights=None))

    def load_folder(self, path: str | os.PathLike) -> None:
        """Load a ``{vae,scheduler,unet}`` folder (the release's ``video_detokenizer/`` or ours)
        strictly: every key of the VAE, the UNet and the motion encoder, no other.

        Raises:
            ValueError: missing / unexpected keys or other shapes, each named.
        """
        folder = Path(path)
        unet_file = next(
            (folder / "unet" / name for name in UNET_FILES if (folder / "unet" / name).is_file()), None
        )
        if unet_file is None:
            raise FileNotFoundError(f"{folder}/unet holds none of {', '.join(UNET_FILES)}")
        unet_state = read_state_dict(unet_file)
        combined = {
            (key if key.startswith(ENCODER_PREFIX) else "unet." + key): value
            for key, value in unet_state.items()
        }
        vae_file = folder / "vae" / "diffusion_pytorch_model.safetensors"
        vae_state = (
            load_file(vae_file) if vae_file.is_file() else read_state_dict(folder / "vae" / UNET_FILES[1])
        )
        combined |= {"vae." + key: value for key, value in vae_state.items()}
        strict_load(self, combined, ("unet.", ENCODER_PREFIX, "vae."), folder)
        self.scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """The release's layout: ``vae/`` and ``scheduler/`` as diffusers saves them, ``unet/``
        with its ``config.json`` and one weights file holding the UNet (diffusers' names) and
        ``motion_encoder.*``; plus our ``motion_detokenizer_config.json``."""
        folder = self._save_config(path, pretrained_path=None, unet_weights=None)
        self.vae.save_pretrained(folder / "vae")
        self.scheduler.save_pretrained(folder / "scheduler")
        unet_dir = folder / "unet"
        unet_dir.mkdir(exist_ok=True)
        # the stock class name: the release's loader builds its own UNet class from this file
        unet_config = {
            "_class_name": "UNetSpatioTemporalConditionModel",
            "_diffusers_version": diffusers.__version__,
        }
        unet_config |= {key: value for key, value in self.unet.config.items() if not key.startswith("_")}
        (unet_dir / "config.json").write_text(json.dumps(unet_config, indent=2) + "\n")
        tensors = {key: value for key, value in self.unet.state_dict().items()}
        tensors |= {ENCODER_PREFIX + key: value for key, value in self.motion_encoder.state_dict().items()}
        save_file({key: value.contiguous() for key, value in tensors.items()}, unet_dir / UNET_FILES[0])

    # ---------------------------------------------------------------------- shapes

    num_frames = config_value("num_frames")

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of decoded clips."""
        return self.config.height, self.config.width

    @property
    def latent_size(self) -> tuple[int, int]:
        """(H, W) divided by the VAE's factor: where the motion channels live."""
        factor = vae_factor(self.config)
        return self.config.height // factor, self.config.width // factor

    # ------------------------------------------------------------------ the pieces

    def motion_latents(self, motion_b2fhw: torch.Tensor) -> torch.Tensor:
        """A field in the motion tokenizer's units -> the UNet's 2 motion channels
        ``(B, 2, F, H/8, W/8)``: bicubic-resized to the latent grid, times ``condition_scale``."""
        return motion_condition(motion_b2fhw, *self.latent_size, self.config.condition_scale)

    def encode_motion(self, condition_b2fhw: torch.Tensor) -> torch.Tensor:
        """Motion channels ``(B, 2, F, h, w)`` -> the context ``(B, F, 256, D)``: each frame
        bicubic-resized (fp32, no antialias) to the 16 x 16 condition grid, then the encoder."""
        batch, channels, frames = condition_b2fhw.shape[:3]
        frames_nchw = condition_b2fhw.transpose(1, 2).flatten(0, 1).float()
        grid = F.interpolate(frames_nchw, size=(CONDITION_GRID, CONDITION_GRID), mode="bicubic")
        grid_b2fgg = grid.view(batch, frames, channels, CONDITION_GRID, CONDITION_GRID).transpose(1, 2)
        return self.motion_encoder(grid_b2fgg.to(self.dtype))

    def keyframe_latents(self, keyframe_b3hw: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` (noise already added) -> the VAE posterior's mode ``(B, 4, H/8, W/8)``,
        unscaled (SVD's image latents)."""
        return self.vae.encode(keyframe_b3hw.to(self.vae.dtype)).latent_dist.mode()

    def added_time_ids(self, batch: int) -> torch.Tensor:
        """``(B, 3)``: fps, motion bucket, noise augmentation."""
        c = self.config
        ids = torch.tensor(
            [[float(c.fps), float(c.motion_bucket_id), c.noise_aug_strength]], device=self.device
        )
        return ids.repeat(batch, 1).to(self.dtype)

    def denoise(self, sample_bfchw, timestep, context_btsd, image_bfchw, motion_bfchw) -> torch.Tensor:
        """One UNet call on the 10-channel input ``[sample, keyframe latents, motion]``."""
        inputs = torch.cat([sample_bfchw, image_bfchw, motion_bfchw], dim=2).to(self.dtype)
        ids = self.added_time_ids(sample_bfchw.shape[0])
        return self.unet(
            inputs, timestep, encoder_hidden_states=context_btsd.to(self.dtype), added_time_ids=ids
        )[0]

    # -------------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample_latents(
        self,
        keyframe_b3hw: torch.Tensor,
        condition_b2fhw: torch.Tensor,
        steps: int,
        min_guidance: float,
        max_guidance: float,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Euler sampling of ``(B, F, 4, h, w)`` latents from a keyframe in [-1, 1] and the
        motion channels (``motion_latents``). The generator's draws are the release's, in
        its order: the keyframe's noise, then the initial latents."""
        batch, frames = keyframe_b3hw.shape[0], condition_b2fhw.shape[2]
        draw = random_draw(generator, self.device)
        context = self.encode_motion(condition_b2fhw)
        context = torch.cat([torch.zeros_like(context), context])
        keyframe = keyframe_b3hw.to(self.device, torch.float32)
        keyframe = keyframe + self.config.noise_aug_strength * draw(torch.randn, keyframe.shape)
        image = self.keyframe_latents(keyframe).unsqueeze(1).repeat(1, frames, 1, 1, 1)
        image = torch.cat([torch.zeros_like(image), image])
        motion = condition_b2fhw.to(self.device).transpose(1, 2)
        motion = torch.cat([torch.zeros_like(motion), motion])

        scheduler = EulerDiscreteScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        shape = (batch, frames, self.config.latent_channels, *condition_b2fhw.shape[-2:])
        latents = draw(torch.randn, shape) * scheduler.init_noise_sigma
        scale = guidance_scales(batch, frames, min_guidance, max_guidance).to(self.device)
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            uncond, cond = self.denoise(model_in, t, context, image, motion).float().chunk(2)
            latents = scheduler.step(
                uncond + scale * (cond - uncond), t, latents, generator=generator
            ).prev_sample
        return latents

    @torch.no_grad()
    def decode_latents(self, latents_bfchw: torch.Tensor) -> torch.Tensor:
        """``(B, F, 4, h, w)`` -> ``(B, F, 3, H, W)`` in [-1, 1]: the temporal decoder over
        ``decode_chunk_size`` frames at a time, as the release."""
        batch, frames = latents_bfchw.shape[:2]
        flat = (latents_bfchw.flatten(0, 1) / self.config.scaling_factor).to(self.vae.dtype)
        chunk = self.config.decode_chunk_size
        pieces = [
            self.vae.decode(flat[i : i + chunk], num_frames=len(flat[i : i + chunk])).sample
            for i in range(0, len(flat), chunk)
        ]
        return torch.cat(pieces).float().clamp(-1, 1).view(batch, frames, *pieces[0].shape[1:])

    @torch.no_grad()
    def decode(
        self,
        keyframe: torch.Tensor,
        motion: torch.Tensor,
        steps: int | None = None,
        min_guidance: float | None = None,
        max_guidance: float | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Keyframes ``(B, 3, H, W)`` in [-1, 1] and fields ``(B, 2, F, h, w)`` (motion
        tokenizer units, any h x w) -> clips ``(B, F, 3, H, W)`` in [-1, 1]. Unset sampling
        settings are the config's; ``generator`` (CPU) defaults to one seeded with ``seed``."""
        self._check_inputs(keyframe, motion)
        c = self.config
        generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        latents = self.sample_latents(
            keyframe,
            self.motion_latents(motion.to(self.device, torch.float32)),
            steps if steps is not None else c.steps,
            c.min_guidance if min_guidance is None else min_guidance,
            c.max_guidance if max_guidance is None else max_guidance,
            generator,
        )
        return self.decode_latents(latents)

    # -------------------------------------------------------------------- training

    def loss(
        self, clip: torch.Tensor, motion: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The training loss of clips ``(B, F, 3, H, W)`` in [-1, 1] and their fields
        ``(B, 2, F, h, w)`` (module docstring: EDM-weighted denoising MSE on the VAE latents;
        the keyframe is frame 0; ``uncond_prob`` clips unconditional). Draws come from
        ``generator`` when given, else the device's default generator."""
        self._check_inputs(clip[:, 0], motion, frames=clip.shape[1])
        c = self.config
        batch, frames = clip.shape[:2]
        draw = random_draw(generator, self.device)
        clip = clip.to(self.device, torch.float32)
        with torch.no_grad():
            latents = self.keyframe_latents(clip.flatten(0, 1)).unflatten(0, (batch, frames)).float()
            latents = latents * c.scaling_factor  # the clip's latents in the sampler's units
            keyframe = clip[:, 0] + c.noise_aug_strength * draw(torch.randn, clip[:, 0].shape)
            image = self.keyframe_latents(keyframe).unsqueeze(1).repeat(1, frames, 1, 1, 1).float()
            condition = self.motion_latents(motion.to(self.device, torch.float32))
        context = self.encode_motion(condition)
        keep = (draw(torch.rand, batch) >= c.uncond_prob).float()
        context = context * keep.view(-1, 1, 1, 1).to(context.dtype)
        image = image * keep.view(-1, 1, 1, 1, 1)
        motion_in = condition.transpose(1, 2) * keep.view(-1, 1, 1, 1, 1)

        sigma = (c.p_mean + c.p_std * draw(torch.randn, batch)).exp().view(-1, 1, 1, 1, 1)
        noisy = latents + sigma * draw(torch.randn, latents.shape)
        scale_in = (sigma.square() + 1).rsqrt()
        out = self.denoise(noisy * scale_in, 0.25 * sigma.log().flatten(), context, image, motion_in).float()
        denoised = noisy / (sigma.square() + 1) - sigma * scale_in * out
        weight = (sigma.square() + 1) / sigma.square()
        return (weight * (denoised - latents).square()).mean()

    def forward(self, clip: torch.Tensor, motion: torch.Tensor, **kwargs) -> torch.Tensor:
        """The training loss (``loss``), so a training engine can wrap the module directly."""
        return self.loss(clip, motion, **kwargs)

    def _check_inputs(self, keyframe: torch.Tensor, motion: torch.Tensor, frames: int | None = None) -> None:
        c = self.config
        if keyframe.ndim != 4 or tuple(keyframe.shape[1:]) != (3, c.height, c.width):
            raise ValueError(
                f"expected keyframes (B, 3, {c.height}, {c.width}), got shape {tuple(keyframe.shape)}"
            )
        if motion.ndim != 5 or motion.shape[:2] != (keyframe.shape[0], 2) or motion.shape[2] != c.num_frames:
            raise ValueError(
                f"expected motion fields (B={keyframe.shape[0]}, 2, F={c.num_frames}, h, w), got shape "
                f"{tuple(motion.shape)} (motion_detokenizer.num_frames must be the field's frames)"
            )
        if frames is not None and frames != c.num_frames:
            raise ValueError(f"expected clips of {c.num_frames} frames, got {frames}")


def strict_load(model: torch.nn.Module, weights: dict, prefixes: tuple[str, ...], source) -> None:
    """Load ``weights`` into the parts of ``model`` under ``prefixes``, strictly: every key of
    those parts, no key outside them, the same shapes.

    Raises:
        ValueError: missing / unexpected keys or other shapes, each kind counted and named.
    """
    own = {key: value for key, value in model.state_dict().items() if key.startswith(prefixes)}
    problems = state_dict_mismatch(own, weights)
    if problems:
        raise ValueError(f"{source} does not fit the de-tokenizer config {model.config.name!r}: {problems}")
    model.load_state_dict(weights, strict=False)  # the other parts keep their weights
