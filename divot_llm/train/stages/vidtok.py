"""vidtok: VidTok's autoencoder trained against a PatchGAN discriminator, two optimizers.

The main engine trains ``AutoencoderObjective`` (the autoencoder and the NLL's
log-variance: L1 + LPIPS through the learnable-variance NLL, the regularizer's KL or FSQ
terms, and -- from ``stage.vidtok_loss.disc_start`` -- the adaptively weighted generator
term); the extra engine ``disc`` trains ``DiscriminatorObjective`` (hinge + LeCAM) on the
same clips and their reconstructions, after the autoencoder's update, as the seed's
manual two-optimizer step (``divot_llm.tokenizers.vidtok.objective``). Both engines are
checkpointed and resumed together (``engine/`` and ``engine_disc/``).

The autoencoder starts from ``stage.init_from`` (a released ``.ckpt`` / ``.safetensors``
or a ``divot-export vidtok`` folder) or else ``video_tokenizer.pretrained_path`` (or
random weights); ``stage.fix_encoder`` freezes the encoder (the seed's second stage: the
decoder alone at a higher resolution), ``stage.fix_decoder`` the decoder.

The perceptual term and validation's LPIPS use the weights of ``eval.lpips_path`` and
``eval.lpips_heads_path`` (a perceptual weight > 0 needs them). Validation reconstructs
the held-out clips deterministically (the posterior's mode, or the FSQ codes) and reports
their L1, PSNR and SSIM (and LPIPS), the PSNR of the flat guesses to beat, and a strip of
inputs above their reconstructions (``validation_images``: TensorBoard
``val/reconstruction``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from divot_llm.config.loading import ConfigError
from divot_llm.config.paths import check_path
from divot_llm.config.schema import DivotConfig, OptimConfig, PathKind
from divot_llm.data.media_out import frame_strip
from divot_llm.data.vidtok_examples import VidTokExampleSpec, build_vidtok_loader
from divot_llm.metrics import LPIPS, load_lpips, reconstruction_metrics
from divot_llm.runtime import rng_devices, seed_everything
from divot_llm.tokenizers.vidtok.autoencoder import VidTokAutoencoder, load_vidtok_weights
from divot_llm.tokenizers.vidtok.discriminator import build_discriminator
from divot_llm.tokenizers.vidtok.objective import AutoencoderObjective, DiscriminatorObjective, gan_active
from divot_llm.train.stages.base import MAIN_ENGINE, Stage
from divot_llm.train.validate import zero_safe_sums

DISC_ENGINE = "disc"
STRIP_TAG = "val/reconstruction"
# the loss terms of every step, after the two optimizers' losses and before the regularizer's
AE_PARTS = ("nll_loss", "rec_loss", "p_loss", "g_loss", "d_weight", "logvar")
DISC_PARTS = ("hinge_loss", "lecam_loss", "logits_real", "logits_fake")


def regularizer_term(cfg: DivotConfig) -> str:
    """The regularizer's loss that ``encode`` reports: ``kl_loss`` or FSQ's ``aux_loss``."""
    return "kl_loss" if cfg.video_tokenizer.regularizer == "kl" else "aux_loss"


def build_vidtok_models(
    cfg: DivotConfig, perceptual: nn.Module | None = None
) -> tuple[AutoencoderObjective, DiscriminatorObjective]:
    """(autoencoder objective, discriminator objective) on the CPU in fp32, from
    ``train.seed``, the autoencoder's weights from ``stage.init_from`` or the tokenizer
    config's ``pretrained_path``, the parts ``stage.fix_*`` name frozen.

    Args:
        perceptual: the frozen LPIPS of ``stage.vidtok_loss.perceptual_weight``; None: a
            loss without it (the weight is 0, or only the weights matter: export).

    Raises:
        ConfigError: both halves fixed; PathError: ``stage.init_from`` is not a file or
            folder.
    """
    stage = cfg.stage
    if stage.fix_encoder and stage.fix_decoder:
        raise ConfigError("stage.fix_encoder and stage.fix_decoder are both true: nothing would train")
    seed_everything(cfg.train.seed)
    autoencoder = VidTokAutoencoder(cfg.video_tokenizer)
    start = stage.init_from or cfg.video_tokenizer.pretrained_path
    if start is not None:
        source = "stage.init_from" if stage.init_from else "video_tokenizer.pretrained_path"
        load_vidtok_weights(autoencoder, check_path(start, PathKind.file_or_folder, source))
    autoencoder.encoder.requires_grad_(not stage.fix_encoder)
    autoencoder.decoder.requires_grad_(not stage.fix_decoder)
    loss = stage.vidtok_loss
    discriminator = build_discriminator(loss.disc_type, loss.disc_channels, loss.disc_layers)
    ae_loss = loss if perceptual is not None else dataclasses.replace(loss, perceptual_weight=0.0)
    objective = AutoencoderObjective(
        autoencoder, discriminator, ae_loss, perceptual, cfg.video_tokenizer.sample
    )
    return objective, DiscriminatorObjective(discriminator, loss)


class VidTokStage(Stage):
    """vidtok: the autoencoder's and the discriminator's losses, one engine each."""

    rate_names = {"samples": "clips/s"}
    build_models = staticmethod(build_vidtok_models)

    def __init__(self, cfg: DivotConfig, device: torch.device, dtype: torch.dtype):
        super().__init__(cfg, device, dtype)
        self.loss_cfg = cfg.stage.vidtok_loss
        self.reg_term = regularizer_term(cfg)
        self.loss_names = ("ae_loss", "disc_loss", *AE_PARTS, self.reg_term, *DISC_PARTS)
        self._images: dict[str, np.ndarray] = {}

    @classmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        """The tokenizer config (its pretrained_path), the data, the LPIPS weights;
        ``stage.init_from`` (a file or folder here, not a release) is checked when the
        model is built."""
        return ["video_tokenizer", "data", "eval.lpips_path", "eval.lpips_heads_path"]

    def build(self) -> nn.Module:
        if self.cfg.deepspeed.zero_stage == 3:
            raise ConfigError(
                "stage=vidtok needs deepspeed.zero_stage <= 2: the generator term reads the discriminator's "
                "whole weights outside its engine, and the adaptive weight the decoder's last layer"
            )
        lpips = load_lpips(self.cfg.eval)  # the perceptual loss's and validation's
        self.lpips = lpips.to(self.device) if lpips is not None else None
        module, disc = self.build_models(self.cfg, self._perceptual())
        self.module = module.to(self.device)
        self.disc_objective = disc.to(self.device)
        self.flops_per_clip = self._count_flops_per_clip()
        return self.module

    def _perceptual(self) -> LPIPS | None:
        """The frozen LPIPS of the reconstruction loss (None at weight 0).

        Raises:
            ConfigError: a perceptual weight without LPIPS weights.
        """
        if self.loss_cfg.perceptual_weight == 0:
            return None
        if self.lpips is None:
            raise ConfigError(
                f"stage.vidtok_loss.perceptual_weight={self.loss_cfg.perceptual_weight} needs LPIPS's weights: set "
                "eval.lpips_path (torchvision's vgg16) and eval.lpips_heads_path (vgg.pth), or the weight to 0"
            )
        return self.lpips

    def extra_engines(self) -> dict[str, tuple[nn.Module, OptimConfig]]:
        return {DISC_ENGINE: (self.disc_objective, self.cfg.stage.disc_optim)}

    @property
    def autoencoder(self) -> VidTokAutoencoder:
        return self.module.autoencoder

    @property
    def example_spec(self) -> VidTokExampleSpec:
        return VidTokExampleSpec.of(self.cfg.video_tokenizer)

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        build_loader = build_loader or build_vidtok_loader
        pin = self.device.type == "cuda"
        return build_loader(self.cfg.data, self.example_spec, rank=rank, world_size=world_size, split=split,
                            pin_memory=pin)  # fmt: skip

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        """Clips ``(B, F, 3, H, W)`` -> the autoencoder's ``(B, 3, F, H, W)`` on the device."""
        video_bfchw = batch["video"].to(self.device, non_blocking=True)
        return {"video_bcthw": video_bfchw.transpose(1, 2).to(self.dtype)}

    def loss_terms(self, out: Any) -> list[torch.Tensor]:
        raise NotImplementedError("stage=vidtok computes its terms in forward (two engines)")

    def forward(self, engines: dict[str, Any], inputs: dict[str, Any], step: int) -> list[torch.Tensor]:
        """Autoencoder loss, discriminator loss (0 before ``disc_start``), then their parts."""
        out = engines[MAIN_ENGINE](**inputs, step=step)
        if gan_active(self.loss_cfg, step):
            disc = engines[DISC_ENGINE](inputs["video_bcthw"], out["recon"].detach())
        else:
            zero = out["loss"].new_zeros(())
            disc = {"loss": zero, **{name: zero for name in DISC_PARTS}}
        ae_parts = [out[name] for name in AE_PARTS]
        reg = out.get(self.reg_term, out["loss"].new_zeros(()))  # none with a frozen encoder
        return [out["loss"], disc["loss"], *ae_parts, reg, *(disc[name] for name in DISC_PARTS)]

    def backward_terms(self, step: int) -> dict[str, int]:
        """The autoencoder always; the discriminator from ``disc_start`` on."""
        return {MAIN_ENGINE: 0, DISC_ENGINE: 1} if gan_active(self.loss_cfg, step) else {MAIN_ENGINE: 0}

    def step_counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        clips = float(batch["video"].shape[0])
        flops = clips * self.flops_per_clip
        return flops, flops, {"samples": clips}

    def _count_flops_per_clip(self) -> float:
        """FLOPs of the autoencoder's forward and backward on one clip (the GAN's terms,
        which start later and cost a fraction of it, are not counted), measured by torch;
        the RNG and the gradients come out as they went in."""
        spec = self.example_spec
        ramp_f = torch.linspace(-1, 1, spec.num_frames, device=self.device)
        video = ramp_f.view(1, 1, -1, 1, 1).expand(1, 3, -1, spec.height, spec.width)
        with (
            torch.random.fork_rng(devices=rng_devices(self.device)),
            FlopCounterMode(display=False) as counter,
        ):
            recon, _, _ = self.module.autoencoder(video.contiguous(), sample=False)
            recon.float().abs().mean().backward()
        for p in self.module.parameters():
            p.grad = None
        return float(counter.get_total_flops())

    # ------------------------------------------------------------------ validation

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        """L1 and ``reconstruction_metrics`` (PSNR, SSIM, the flat guesses' PSNR, LPIPS with
        ``eval.lpips_path``) of deterministic reconstructions of every validation clip,
        averaged over all ranks; a strip of the first ``stage.recon_clips`` clips (rank 0's)."""
        strip_clips = self.cfg.stage.recon_clips
        quality = ("psnr", "ssim", "psnr_mean_colour", "psnr_clip_colour")
        quality += ("lpips",) if self.lpips is not None else ()
        self._images = {}

        def batch_sums(index: int, batch: dict) -> list[float]:
            """clips, then sums over clips: L1, then each of ``quality``"""
            video_bfchw = batch["video"].to(self.device).float()
            with torch.no_grad():
                recon_bfchw = self.reconstruct(video_bfchw)
            if index == 0 and strip_clips:
                pairs = zip(video_bfchw, recon_bfchw, strict=True)
                rows = [clip for pair in pairs for clip in pair][: 2 * strip_clips]
                self._images[STRIP_TAG] = np.asarray(frame_strip(rows, max_frames=video_bfchw.shape[1]))
            clips = float(video_bfchw.shape[0])
            scores = reconstruction_metrics(recon_bfchw, video_bfchw, self.lpips)
            l1 = float((recon_bfchw - video_bfchw).abs().mean())
            return [clips, l1 * clips] + [scores[q] * clips for q in quality]

        result = zero_safe_sums(engine, val_loader, max_batches, self.device, batch_sums)
        if result is None:
            return None
        (clips, l1, *sums), count = result
        return {
            "val/rec_loss": l1 / clips,
            **{f"val/{q}": total / clips for q, total in zip(quality, sums, strict=True)},
            "val/samples": clips,
            "val/batches": float(count),
        }

    def reconstruct(self, video_bfchw: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstructions ``(B, F, 3, H, W)`` in fp32 (posterior mode / FSQ
        codes; the autoencoder's chunked ``reconstruct``)."""
        recon_bcthw = self.autoencoder.reconstruct(video_bfchw.transpose(1, 2).to(self.dtype))
        return recon_bcthw.transpose(1, 2).float().clamp(-1, 1)

    def validation_images(self) -> dict[str, np.ndarray]:
        return dict(self._images)
