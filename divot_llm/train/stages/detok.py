"""detok / tokenizer: the de-tokenizer's diffusion loss on full windows (``data.detok_examples``).

* ``DetokStage`` -- detok: the de-tokenizer conditioned on the frozen tokenizer's features.
* ``TokenizerStage`` -- tokenizer: the tokenizer (after its frozen ViT) and the
  de-tokenizer together, through ``TokenizerDiffusionObjective``.

(detok_adapt, which conditions on features sampled from a trained Divot LLM, builds on
``DetokStage`` in ``detok_adapt.py``.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from divot_llm.config.schema import DivotConfig
from divot_llm.data.detok_examples import DetokExampleSpec, build_detok_loader
from divot_llm.detokenizers import VideoDetokenizer
from divot_llm.detokenizers.training import tokenizer_features, tokenizer_frames
from divot_llm.metrics import LPIPS, load_lpips, reconstruction_metrics
from divot_llm.model.build import build_detok_models, build_tokenizer_objective
from divot_llm.runtime import rng_devices
from divot_llm.tokenizers import VideoTokenizer
from divot_llm.train.stages.base import VAL_SEED, Stage
from divot_llm.train.validate import zero_safe_sums

_FLOP_COUNT_CAPTION = "a red circle moving left on a blue background"  # any caption: one clip's FLOPs


class DetokStage(Stage):
    """detok: the de-tokenizer's diffusion loss on full windows, conditioned on the frozen
    tokenizer's features (it sees frames 0, 4, 8, 12, 15 of a 16-frame window)."""

    trains_detokenizer = True
    reconstructs = True  # validation also decodes clips from their features (PSNR/SSIM)
    lpips: LPIPS | None = None  # and scores them with LPIPS when eval.lpips_path is set (build)
    loss_names = ("loss",)
    rate_names = {"samples": "clips/s"}
    # (video tokenizer, engine module) on the CPU, fp32, from train.seed
    build_modules = staticmethod(build_detok_models)

    @classmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        """The tokenizer, the de-tokenizer (and the folder it starts from), the data, and
        validation's LPIPS weights."""
        return ["video_tokenizer", "detokenizer", "stage.detokenizer_init_from", "data",
                "eval.lpips_path", "eval.lpips_heads_path"]  # fmt: skip

    def build(self) -> nn.Module:
        tokenizer, module = self.build_modules(self.cfg)
        self.module = module.to(self.device)
        self.video_tokenizer = self._place_tokenizer(tokenizer)
        self._build_helpers()
        lpips = load_lpips(self.cfg.eval)  # validation's LPIPS when eval.lpips_path is set
        self.lpips = lpips.to(self.device) if lpips is not None else None
        self.flops_per_clip = self._count_flops_per_clip()
        return self.module

    def _place_tokenizer(self, tokenizer: VideoTokenizer) -> VideoTokenizer:
        """The frozen tokenizer on the device, in the frozen helpers' dtype."""
        return tokenizer.to(self.device, self.frozen_dtype)

    def _build_helpers(self) -> None:
        """Anything else ``prepare`` needs (the LLM of detok_adapt)."""

    @property
    def detokenizer(self) -> VideoDetokenizer:
        return self.module

    @property
    def example_spec(self) -> DetokExampleSpec:
        return DetokExampleSpec.of(self.detokenizer)

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        build_loader = build_loader or build_detok_loader
        return build_loader(
            self.cfg.data,
            self.example_spec,
            rank=rank,
            world_size=world_size,
            split=split,
            pin_memory=self.device.type == "cuda",  # page-locked: the copies in prepare overlap
        )

    @torch.no_grad()
    def prepare(self, batch: dict, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Windows ``(B, F, 3, S, S)`` on the device, conditioned on ``features (B, N, D)``;
        ``seed`` fixes any sampled conditioning (validation)."""
        video = batch["video"].to(self.device, non_blocking=True)
        return {"video": video, "features": self.features(batch, video, seed)}

    def features(self, batch: dict, video_bfchw: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """The frozen tokenizer's features of the windows."""
        return tokenizer_features(self.video_tokenizer, video_bfchw)

    def loss_terms(self, out: torch.Tensor) -> list[torch.Tensor]:
        return [out]

    def step_counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        clips = float(batch["video"].shape[0])
        flops = clips * self.flops_per_clip
        return flops, flops, {"samples": clips}

    def _count_flops_per_clip(self) -> float:
        """FLOPs of one clip's training step -- ``prepare``, forward and backward --
        counted by torch on a clip of distinct frames (so exactly what autograd runs:
        frozen parts have no backward; recomputation under gradient checkpointing is
        included; a still would run the ViT once). The RNG and the gradients come out as
        they went in."""
        spec = self.example_spec
        ramp_f = torch.linspace(-1, 1, spec.num_frames)
        video = ramp_f.view(1, -1, 1, 1, 1).expand(1, -1, 3, spec.image_size, spec.image_size)
        batch = {"video": video, "captions": [_FLOP_COUNT_CAPTION]}
        with (
            torch.random.fork_rng(devices=rng_devices(self.device)),
            FlopCounterMode(display=False) as counter,
        ):
            loss = self.module(**self.prepare(batch))
            if loss.requires_grad:
                loss.backward()
        for p in self.module.parameters():
            p.grad = None
        return float(counter.get_total_flops())

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        """Diffusion loss (fixed noise and timesteps) and, when the stage ``reconstructs``,
        PSNR/SSIM of reconstructions from the tokenizer's features (``stage.recon_clips``
        per rank, fixed sampler seed) next to the PSNR of the flat guesses to beat (the
        decoded clips' mean colour, each clip's own) and LPIPS when ``eval.lpips_path`` is
        set, averaged over all ranks."""
        recon_left = self.cfg.stage.recon_clips if self.reconstructs else 0
        quality = ("psnr", "ssim", "psnr_mean_colour", "psnr_clip_colour")
        quality += ("lpips",) if self.lpips is not None else ()

        def batch_sums(index: int, batch: dict) -> list[float]:
            """loss sum, clips, decoded clips, then a sum over decoded clips per ``quality``"""
            nonlocal recon_left
            seed = VAL_SEED + index
            inputs = self.prepare(batch, seed=seed)
            with torch.no_grad():
                loss = engine(**inputs, generator=torch.Generator().manual_seed(seed))
            video = batch["video"].to(self.device)
            clips = video.shape[0]
            take = min(recon_left, clips)
            recon_left -= take
            scores = self._reconstruction_quality(video[:take], seed) if take else {}
            return [float(loss) * clips, float(clips), float(take)] + [
                scores.get(q, 0.0) * take for q in quality
            ]

        result = zero_safe_sums(
            engine, val_loader, max_batches, self.device, batch_sums, self.before_validation
        )
        if result is None:
            return None
        (loss_sum, clips, decoded, *quality_sums), count = result
        metrics = {"val/loss": loss_sum / clips, "val/samples": clips, "val/batches": float(count)}
        if decoded:
            metrics.update(
                {f"val/{q}": total / decoded for q, total in zip(quality, quality_sums, strict=True)}
            )
        return metrics

    def _reconstruction_quality(self, video_bfchw: torch.Tensor, seed: int) -> dict[str, float]:
        """``reconstruction_metrics`` of the clips decoded from their ``reconstruction_features``."""
        recon = self.detokenizer.decode(
            self.reconstruction_features(video_bfchw), steps=self.cfg.stage.recon_steps, seed=seed
        )
        return reconstruction_metrics(recon, video_bfchw, self.lpips)

    def before_validation(self) -> None:
        """Anything to bring up to date before decoding (collective when it runs a module)."""

    @torch.no_grad()
    def reconstruction_features(self, video_bfchw: torch.Tensor) -> torch.Tensor:
        """Features reconstructions are decoded from: the (frozen) tokenizer's."""
        return tokenizer_features(self.video_tokenizer, video_bfchw)


class TokenizerStage(DetokStage):
    """tokenizer: the tokenizer (after its ViT) and the de-tokenizer through the diffusion
    loss; the engine's module is the ``TokenizerDiffusionObjective``."""

    build_modules = staticmethod(build_tokenizer_objective)

    @property
    def detokenizer(self) -> VideoDetokenizer:
        return self.module.detokenizer

    def _place_tokenizer(self, tokenizer: VideoTokenizer) -> VideoTokenizer:
        """The tokenizer being trained: part of the engine's module, placed with it."""
        return tokenizer

    @torch.no_grad()
    def prepare(self, batch: dict, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Only the windows: the objective runs the tokenizer being trained (nothing is
        sampled here, ``seed`` is not needed)."""
        return {"video_bfchw": batch["video"].to(self.device, non_blocking=True)}

    def before_validation(self) -> None:
        """The guidance's null features are the *current* tokenizer's zero-clip features."""
        self.module.refresh_null_features()

    @torch.no_grad()
    def reconstruction_features(self, video_bfchw: torch.Tensor) -> torch.Tensor:
        """Features of the tokenizer being trained."""
        return self.module.encode(tokenizer_frames(video_bfchw, self.module.tokenizer.frames_per_clip))
