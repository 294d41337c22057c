"""Arch ``vdm_detokenizer``: a pixel-space de-tokenizer from our video-diffusion-pytorch ``Unet3D`` +
``GaussianDiffusion`` (``vdm.py``), conditioned on the video tokenizer's features.

Pipeline for B feature sets:

1. ``image_proj_model`` (``TokenPooling``): ``(B, N, D)`` -> ``(B, cond_dim)``, one learned
   query attending over the N tokens (or their mean, ``pooling: mean``), then a linear map.
   This is the seed-compatible conditioning: ``Unet3D`` concatenates one vector to its time
   embedding. With ``cross_attention``, the UNet also attends to the N tokens themselves
   (``Unet3D(context_dim=D)``), dropped clips to its learned ``null_context`` token.
2. Ancestral sampling (``sampler: ancestral``) of ``(B, 3, F, H, W)`` in [-1, 1] over
   ``steps`` evenly spaced timesteps (all of them: the seed's DDPM chain), or DDIM
   (``sampler: ddim``, ``GaussianDiffusion.sample_ddim``, noise share ``ddim_eta``), guided
   against the UNet's learned ``null_cond_emb``; returned as ``(B, F, 3, H, W)`` (the
   interface's layout).

Null features: the unconditional input of this arch is the UNet's learned null embedding
(the seed's classifier-free guidance), which replaces the *pooled* vector of dropped clips.
Divot's zero-clip features are therefore not needed: ``set_null_features`` still stores
them (the stages call it) but guidance never reads them and they are not saved.

Training (``loss``): the clip is noised at a random timestep and the UNet regresses the
noise, the clean clip or v (``objective``; L1 or L2, ``loss_type``), conditioned on the
pooled features or, with probability ``cond_drop_prob``, on the null embedding.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import load_model, save_model
from torch import nn

from divot_llm.detokenizers.base import VideoDetokenizer, random_draw, zero_clip_features
from divot_llm.detokenizers.registry import register_video_detokenizer
from divot_llm.detokenizers.vdm import GaussianDiffusion, Unet3D, load_seed_checkpoint
from divot_llm.detokenizers.vdm_detokenizer_config import VdmDetokenizerConfig
from divot_llm.tokenizers.base import VideoTokenizer, config_value

WEIGHTS_FILE = "detokenizer.safetensors"  # save_pretrained layout (+ VideoDetokenizer.config_file)
# Unet3D parts that only exist with cross_attention: never in a seed checkpoint
CROSS_ATTENTION_PARTS = frozenset({"null_context", "down_cross_attn", "mid_cross_attn", "up_cross_attn"})

log = logging.getLogger(__name__)


class TokenPooling(nn.Module):
    """``(B, N, D)`` feature tokens -> ``(B, cond_dim)``: attention pooling with one learned
    query (``attention``) or the token mean (``mean``), then LayerNorm + Linear; or the one
    token itself (``none``: the seed's text conditioning, no parameters)."""

    def __init__(self, feature_dim: int, cond_dim: int, mode: str, heads: int) -> None:
        super().__init__()
        if mode not in ("attention", "mean", "none"):
            raise ValueError(f"pooling must be 'attention', 'mean' or 'none', got {mode!r}")
        if mode == "attention" and feature_dim % heads:
            raise ValueError(f"pooling_heads={heads} must divide feature_dim={feature_dim}")
        if mode == "none" and feature_dim != cond_dim:
            raise ValueError(
                f"pooling 'none' feeds the feature vector in as the UNet's cond vector: feature_dim="
                f"{feature_dim} must equal cond_dim={cond_dim}"
            )
        self.mode = mode
        if mode == "none":
            return
        if mode == "attention":
            self.query = nn.Parameter(torch.randn(1, 1, feature_dim) * feature_dim**-0.5)
            self.attn = nn.MultiheadAttention(feature_dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(feature_dim)
        self.proj = nn.Linear(feature_dim, cond_dim)

    def forward(self, feats_bnd: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            if feats_bnd.shape[1] != 1:
                raise ValueError(
                    f"pooling 'none' takes one feature vector per clip (B, 1, D), got {feats_bnd.shape[1]} tokens"
                )
            return feats_bnd[:, 0]
        if self.mode == "attention":
            query_b1d = self.query.expand(feats_bnd.shape[0], -1, -1)
            pooled_bd = self.attn(query_b1d, feats_bnd, feats_bnd, need_weights=False)[0][:, 0]
        else:
            pooled_bd = feats_bnd.mean(dim=1)
        return self.proj(self.norm(pooled_bd))


def spaced_timesteps(timesteps: int, steps: int) -> list[int]:
    """``steps`` distinct timesteps from ``timesteps - 1`` down to 0, evenly spaced
    (every timestep when ``steps >= timesteps``)."""
    if steps >= timesteps:
        return list(range(timesteps - 1, -1, -1))
    spaced = torch.linspace(timesteps - 1, 0, steps).round().long().tolist()
    return sorted(set(spaced), reverse=True)


@register_video_detokenizer("vdm_detokenizer")
class VdmDetokenizer(VideoDetokenizer):
    """Video diffusion (Ho et al.) in pixel space as a Divot de-tokenizer.

    Args:
        config: architecture, schedule and sampler settings (weights are loaded by
            ``from_config``).

    Example:
        >>> detok = build_video_detokenizer(compose_config(["detokenizer=vdm_tiny"]).detokenizer)
        >>> video_bfchw = detok.decode(feats_bnd, steps=50, seed=0)  # (B, 8, 3, 16, 16) in [-1, 1]
    """

    config_class = VdmDetokenizerConfig

    def __init__(self, config: VdmDetokenizerConfig) -> None:
        super().__init__()
        self.config = config
        unet = Unet3D(
            dim=config.dim,
            cond_dim=config.cond_dim,
            dim_mults=tuple(config.dim_mults),
            channels=3,
            attn_heads=config.attn_heads,
            attn_dim_head=config.attn_dim_head,
            init_kernel_size=config.init_kernel_size,
            use_sparse_linear_attn=config.use_sparse_linear_attn,
            context_dim=config.feature_dim if config.cross_attention else None,
        )
        stride = 2 ** (len(config.dim_mults) - 1)
        if config.image_size % stride:
            raise ValueError(f"image_size={config.image_size} must be divisible by {stride} (dim_mults)")
        # ``diffusion_model`` / ``image_proj_model``: the names the detok stages' trainable
        # switches (set_trainable) use for every de-tokenizer
        self.diffusion_model = GaussianDiffusion(
            unet,
            image_size=config.image_size,
            num_frames=config.num_frames,
            channels=3,
            timesteps=config.timesteps,
            loss_type=config.loss_type,
            beta_schedule=config.beta_schedule,
            objective=config.objective,
        )
        self.image_proj_model = TokenPooling(
            config.feature_dim, config.cond_dim, config.pooling, config.pooling_heads
        )
        self.null_features = None  # stored by set_null_features, unused (see the module doc)

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_config(
        cls, config: VdmDetokenizerConfig, tokenizer: VideoTokenizer | None = None
    ) -> VdmDetokenizer:
        """Build from a config, loading ``pretrained_path`` strictly when set: a
        ``save_pretrained`` weights file (``.safetensors``) or a seed Trainer checkpoint
        (``load_seed_checkpoint``; see ``load_seed_weights``).

        Raises:
            ValueError: a weights file that does not fit the config.
        """
        detok = cls(config)
        if config.pretrained_path is not None and Path(config.pretrained_path).suffix != ".safetensors":
            detok.load_seed_weights(config.pretrained_path, config.pretrained_weights)
        elif config.pretrained_path is not None:
            try:
                load_model(detok, config.pretrained_path, strict=True)
            except RuntimeError as err:
                raise ValueError(
                    f"{config.pretrained_path} does not fit the de-tokenizer config: {err}"
                ) from err
        if tokenizer is not None:
            detok.set_null_features(zero_clip_features(tokenizer))
        return detok

    def load_seed_weights(self, path: str | os.PathLike, which: str = "ema") -> None:
        """Load the ``which`` (``ema`` | ``model``) ``GaussianDiffusion`` state of a seed
        video-diffusion-pytorch Trainer checkpoint into ``diffusion_model``, strictly (with
        ``cross_attention``, its zero-initialised blocks stay as built). The pooling is not in
        a seed checkpoint and stays randomly initialised.

        Raises:
            ValueError: not a seed checkpoint, or a UNet/schedule that does not fit the config
                (the message names the missing, unexpected and mismatched keys).
        """
        state = load_seed_checkpoint(path)[which]
        own = {
            name: tensor
            for name, tensor in self.diffusion_model.state_dict().items()
            if name.removeprefix("denoise_fn.").split(".")[0] not in CROSS_ATTENTION_PARTS
        }
        missing = sorted(own.keys() - state.keys())
        unexpected = sorted(state.keys() - own.keys())
        mismatched = [
            f"{name}: checkpoint {tuple(state[name].shape)}, config {tuple(own[name].shape)}"
            for name in sorted(own.keys() & state.keys())
            if state[name].shape != own[name].shape
        ]
        if missing or unexpected or mismatched:
            problems = {"missing": missing, "unexpected": unexpected, "shape mismatch": mismatched}
            detail = "; ".join(
                f"{kind} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                for kind, keys in problems.items()
                if keys
            )
            raise ValueError(
                f"{path} ['{which}'] does not fit the de-tokenizer's UNet/diffusion config: {detail}"
            )
        # strict over the seed's keys: every one of them was checked present above
        self.diffusion_model.load_state_dict(state, strict=not self.config.cross_attention)
        log.info(
            "loaded the '%s' weights of seed checkpoint %s into diffusion_model; image_proj_model "
            "(the feature pooling) is not in it and stays randomly initialised",
            which,
            path,
        )

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> VdmDetokenizer:
        """Load a folder written by ``save_pretrained``."""
        return cls.from_config(cls._saved_config(path, pretrained_path=str(Path(path) / WEIGHTS_FILE)))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write ``detokenizer_config.json`` and the state dict (safetensors; the
        ``diffusion_model.*`` part is a seed ``GaussianDiffusion`` state dict). ``save_model``
        because every temporal attention shares one rotary embedding buffer."""
        path = self._save_config(path, pretrained_path=None)
        save_model(self, str(path / WEIGHTS_FILE))

    # ---------------------------------------------------------------------- shapes

    num_frames = config_value("num_frames")
    image_size = config_value("image_size")
    feature_dim = config_value("feature_dim")
    fps = config_value("fps")

    def set_trainable(self, diffusion_model: bool = True, image_proj_model: bool = True) -> None:
        """Choose what trains: the UNet (with its null embedding) and/or the pooling."""
        self.diffusion_model.requires_grad_(diffusion_model)
        self.image_proj_model.requires_grad_(image_proj_model)

    # -------------------------------------------------------------------- sampling

    def _decode(
        self,
        features_bnd: torch.Tensor,
        steps: int | None,
        guidance: float | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        steps = self.config.sample_steps if steps is None else steps
        guidance = self.config.guidance_scale if guidance is None else guidance
        diffusion, unet = self.diffusion_model, self.diffusion_model.denoise_fn
        cond_bc = self.image_proj_model(features_bnd)
        memory = {"context": features_bnd} if self.config.cross_attention else {}
        batch = features_bnd.shape[0]
        if self.config.sampler == "ddim":
            video_bcfhw = diffusion.sample_ddim(
                cond=cond_bc,
                cond_scale=guidance,
                steps=min(steps, diffusion.num_timesteps),  # as spaced_timesteps: all of them at most
                eta=self.config.ddim_eta,
                generator=generator,
                **memory,
            )
            return rearrange(video_bcfhw * 2 - 1, "b c f h w -> b f c h w").clamp(-1, 1)
        shape = (batch, 3, self.num_frames, self.image_size, self.image_size)

        def randn() -> torch.Tensor:
            return torch.randn(shape, generator=generator).to(self.device, self.dtype)

        abar_t = diffusion.alphas_cumprod
        x = randn()
        timesteps = spaced_timesteps(diffusion.num_timesteps, steps)
        for index, t in enumerate(timesteps):
            t_b = torch.full((batch,), t, device=self.device, dtype=torch.long)
            out = unet.forward_with_cond_scale(x, t_b, cond=cond_bc, cond_scale=guidance, **memory)
            x0 = diffusion.predict_start(x, t_b, out).clamp(-1, 1)
            # q(x_prev | x_t, x0) between the two spaced steps: with every timestep these
            # are GaussianDiffusion's posterior buffers
            abar_prev = abar_t[timesteps[index + 1]] if index + 1 < len(timesteps) else abar_t.new_tensor(1.0)
            beta = 1 - abar_t[t] / abar_prev
            mean = (beta * abar_prev.sqrt() * x0 + (1 - abar_prev) * (1 - beta).sqrt() * x) / (1 - abar_t[t])
            noise = randn()  # drawn at the last step too (zero weight): the stream does not depend on it
            x = mean + (beta * (1 - abar_prev) / (1 - abar_t[t])).sqrt() * noise
        return rearrange(x, "b c f h w -> b f c h w")

    # -------------------------------------------------------------------- training

    def loss(
        self,
        video: torch.Tensor,
        features: torch.Tensor,
        cond_drop_prob: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Diffusion loss on the pixels, the UNet predicting ``objective`` (see
        ``VideoDetokenizer.loss``).

        Raises:
            ValueError: bad feature shape, or clip size/length other than the config's.
        """
        self._check_clips(video, features)
        batch, device = video.shape[0], self.device
        p_drop = self.config.cond_drop_prob if cond_drop_prob is None else cond_drop_prob
        draw = random_draw(generator, device)

        x_start = rearrange(video.to(device=device, dtype=self.dtype), "b f c h w -> b c f h w")
        unet = self.diffusion_model.denoise_fn
        features = features.to(device=device, dtype=self.dtype)
        cond_bc = self.image_proj_model(features)
        # dropout drawn here rather than by the UNet (null_cond_prob), so a generator fixes it
        drop_b = draw(torch.rand, batch) < p_drop
        cond_bc = torch.where(drop_b[:, None], unet.null_cond_emb.to(cond_bc.dtype), cond_bc)
        memory = {}
        if self.config.cross_attention:
            memory["context"] = torch.where(
                drop_b[:, None, None], unet.null_context.to(features.dtype), features
            )
        focus_b = draw(torch.rand, batch) < self.config.prob_focus_present
        t_b = draw(torch.randint, 0, self.diffusion_model.num_timesteps, (batch,))
        noise = draw(torch.randn, x_start.shape).to(x_start.dtype)
        return self.diffusion_model.p_losses(
            x_start, t_b, cond=cond_bc, noise=noise, null_cond_prob=0.0, focus_present_mask=focus_b, **memory
        ).float()

    def extra_repr(self) -> str:
        return f"name={self.config.name!r}, frames={self.num_frames}, size={self.image_size}"
