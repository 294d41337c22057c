"""lavit_detok: Video-LaVIT's video de-tokenizer (``motion_detokenizer=<option>``) trained on
motion clips and their frames (``data.lavit_clips``).

The engine trains ``LaVITVideoDetokenizer`` itself (its forward is ``loss``: the EDM-weighted
denoising loss of the clip's latents given frame 0 and the field): the UNet and the motion
condition encoder; the VAE is frozen. It starts from the config's ``pretrained_path`` (the
release's ``video_detokenizer/`` or a ``divot-export motion-detokenizer`` folder) or random
weights from ``train.seed``.

Validation reports the loss with fixed draws (``VAL_SEED`` + batch: comparable across steps)
and, for the first ``stage.recon_clips`` clips of each rank, PSNR/SSIM of the clips decoded
from their frame 0 and field (``stage.recon_steps`` Euler steps, the config's guidance)
next to the flat guesses' PSNR.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import DivotConfig
from divot_llm.data.clip_sampling import uint8_to_model_pixels
from divot_llm.data.lavit_clips import LaVITClipSpec, build_lavit_clip_loader
from divot_llm.detokenizers.motion.lavit import LaVITVideoDetokenizer
from divot_llm.detokenizers.motion.registry import build_motion_detokenizer
from divot_llm.metrics import reconstruction_metrics
from divot_llm.runtime import rng_devices, seed_everything
from divot_llm.train.stages.base import VAL_SEED, Stage
from divot_llm.train.validate import zero_safe_sums

# of decoded clips; and of their latents, with the all-zero guess's MSE to beat: a tiny run's
# random VAE caps the pixel scores, not the latents'
QUALITY = ("psnr", "ssim", "psnr_mean_colour", "psnr_clip_colour", "latent_mse", "latent_mse_zero")


def check_detok_shapes(cfg: DivotConfig) -> None:
    """A motion de-tokenizer is chosen and decodes the data's clip length.

    Raises:
        ConfigError: none chosen, or its ``num_frames`` is not ``data.motion.clip_frames``.
    """
    detok = cfg.motion_detokenizer
    if detok is None:
        raise ConfigError(
            "stage=lavit_detok needs a motion de-tokenizer: add motion_detokenizer=lavit_tiny (or lavit)"
        )
    if detok.num_frames != cfg.data.motion.clip_frames:
        raise ConfigError(
            f"motion_detokenizer.num_frames={detok.num_frames} but data.motion gives "
            f"{cfg.data.motion.clip_frames}-frame clips (2 x gop): make them equal"
        )


def build_lavit_detok(cfg: DivotConfig) -> LaVITVideoDetokenizer:
    """The de-tokenizer of ``cfg.motion_detokenizer`` on the CPU in fp32, weights from its
    ``pretrained_path`` or random from ``train.seed`` (the export rebuilds the frozen VAE so)."""
    check_detok_shapes(cfg)
    seed_everything(cfg.train.seed)
    return build_motion_detokenizer(cfg.motion_detokenizer)


class LaVITDetokStage(Stage):
    """lavit_detok: one engine around the de-tokenizer, its loss."""

    rate_names = {"samples": "clips/s"}

    @classmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        return ["motion_detokenizer", "data"]

    def build(self) -> nn.Module:
        self.module = build_lavit_detok(self.cfg).to(self.device)
        self.flops_per_clip = self._count_flops_per_clip()
        return self.module

    @property
    def example_spec(self) -> LaVITClipSpec:
        detok = self.cfg.motion_detokenizer
        return LaVITClipSpec(motion=self.cfg.data.motion, height=detok.height, width=detok.width)

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        build_loader = build_loader or build_lavit_clip_loader
        pin = self.device.type == "cuda"
        return build_loader(self.cfg.data, self.example_spec, rank=rank, world_size=world_size, split=split,
                            pin_memory=pin)  # fmt: skip

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        return {
            "clip": uint8_to_model_pixels(batch["clip"].to(self.device, non_blocking=True)).to(self.dtype),
            "motion": batch["motion"].to(self.device, non_blocking=True).to(self.dtype),
        }

    def loss_terms(self, out: torch.Tensor) -> list[torch.Tensor]:
        return [out]

    def step_counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        clips = float(batch["clip"].shape[0])
        flops = clips * self.flops_per_clip
        return flops, flops, {"samples": clips}

    def _count_flops_per_clip(self) -> float:
        """FLOPs of one clip's loss and backward (the frozen VAE's encoder included, no
        backward through it), measured by torch; RNG and gradients come out as they went in."""
        c, f = self.cfg.motion_detokenizer, self.cfg.data.motion
        clip = torch.zeros(1, c.num_frames, 3, c.height, c.width, device=self.device)
        motion = torch.zeros(1, 2, f.clip_frames, f.height, f.width, device=self.device)
        with (
            torch.random.fork_rng(devices=rng_devices(self.device)),
            FlopCounterMode(display=False) as counter,
        ):
            self.module(clip, motion).backward()
        for p in self.module.parameters():
            p.grad = None
        return float(counter.get_total_flops())

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        """The loss with fixed draws, and PSNR/SSIM of ``stage.recon_clips`` decoded clips per
        rank, averaged over all ranks."""
        recon_left = self.cfg.stage.recon_clips

        def batch_sums(index: int, batch: dict) -> list[float]:
            """loss sum, clips, decoded clips, then a sum over decoded clips per ``QUALITY``"""
            nonlocal recon_left
            seed = VAL_SEED + index
            inputs = self.prepare(batch)
            with torch.no_grad():
                loss = engine(**inputs, generator=torch.Generator().manual_seed(seed))
            clips = inputs["clip"].shape[0]
            take = min(recon_left, clips)
            recon_left -= take
            scores = (
                self._reconstruction(inputs["clip"][:take], inputs["motion"][:take], seed) if take else {}
            )
            return [float(loss) * clips, float(clips), float(take)] + [
                scores.get(q, 0.0) * take for q in QUALITY
            ]

        result = zero_safe_sums(engine, val_loader, max_batches, self.device, batch_sums)
        if result is None:
            return None
        (loss_sum, clips, decoded, *quality_sums), count = result
        metrics = {"val/loss": loss_sum / clips, "val/samples": clips, "val/batches": float(count)}
        if decoded:
            metrics |= {f"val/{q}": total / decoded for q, total in zip(QUALITY, quality_sums, strict=True)}
        return metrics

    @torch.no_grad()
    def _reconstruction(self, clip: torch.Tensor, motion: torch.Tensor, seed: int) -> dict[str, float]:
        """Clips sampled from their frame 0 and field (``stage.recon_steps``, fixed seed):
        ``reconstruction_metrics`` of the decoded frames, and the MSE of the sampled latents
        to the clip's latents next to the all-zero guess's."""
        detok = self.module
        c = detok.config
        generator = torch.Generator().manual_seed(seed)
        latents = detok.sample_latents(
            clip[:, 0],
            detok.motion_latents(motion.float()),
            self.cfg.stage.recon_steps or c.steps,
            c.min_guidance,
            c.max_guidance,
            generator,
        )
        target = (
            detok.keyframe_latents(clip.flatten(0, 1).float()).unflatten(0, clip.shape[:2]) * c.scaling_factor
        )
        scores = reconstruction_metrics(detok.decode_latents(latents), clip.float())
        scores["latent_mse"] = float((latents - target).square().mean())
        scores["latent_mse_zero"] = float(target.square().mean())
        return scores
