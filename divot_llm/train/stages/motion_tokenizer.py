"""motion_tokenizer: a motion tokenizer (``motion_tokenizer=<option>``, Video-LaVIT's) trained
on the motion-vector fields of ``data.motion`` clips.

The engine trains ``MotionTokenizerObjective`` (``divot_llm.tokenizers.motion.objective``):
the field's MSE plus the commitment term, with the codebook moved by EMA outside the
optimizer (a buffer of the module: checkpointed and restored with it) and dead codes
restarted from batch latents, identically on every rank. The tokenizer starts from its
config's ``pretrained_path`` (the released ``motion_tokenizer.bin`` or a
``divot-export motion-tokenizer`` folder) or random weights from ``train.seed``.

Validation encodes and decodes the held-out clips and reports the field's MSE next to the
zero-motion guess's (``val/mse_zero``, the floor to beat: a tokenizer that has learnt
nothing outputs ~0), the commitment term, and the codebook's use over all validation codes
(``val/perplexity``, ``val/usage``); ``validation_images`` draws rank 0's first
``stage.recon_clips`` fields above their reconstructions in flow colours
(TensorBoard ``val/motion``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import DivotConfig
from divot_llm.data.motion_examples import MotionExampleSpec, build_motion_loader
from divot_llm.data.motion_viz import GAP as STRIP_GAP
from divot_llm.data.motion_viz import motion_strip
from divot_llm.runtime import rng_devices, seed_everything
from divot_llm.tokenizers.motion.objective import MotionTokenizerObjective, code_histogram, perplexity
from divot_llm.tokenizers.motion.registry import build_motion_tokenizer
from divot_llm.train.stages.base import Stage
from divot_llm.train.validate import zero_safe_sums

STRIP_TAG = "val/motion"
STRIP_FRAMES = 6  # of each field in the validation strip, evenly spread


def check_motion_shapes(cfg: DivotConfig) -> None:
    """The tokenizer's field size is the data's clip.

    Raises:
        ConfigError: no motion tokenizer chosen, or its frames / height / width differ
            from ``data.motion``'s clip.
    """
    tokenizer = cfg.motion_tokenizer
    if tokenizer is None:
        raise ConfigError(
            "stage=motion_tokenizer needs a motion tokenizer: add motion_tokenizer=lavit_tiny (or lavit)"
        )
    motion = cfg.data.motion
    ours = (tokenizer.frames, tokenizer.height, tokenizer.width)
    data = (motion.clip_frames, motion.height, motion.width)
    if ours != data:
        raise ConfigError(
            f"motion_tokenizer takes (frames, height, width) {ours} but data.motion gives {data} "
            "(2 x gop frames): set data.motion.gop / height / width to match, or the tokenizer's"
        )


def build_motion_objective(cfg: DivotConfig) -> MotionTokenizerObjective:
    """The objective around the tokenizer of ``cfg.motion_tokenizer`` on the CPU in fp32,
    weights from its ``pretrained_path`` or random from ``train.seed``."""
    check_motion_shapes(cfg)
    seed_everything(cfg.train.seed)
    return MotionTokenizerObjective(
        build_motion_tokenizer(cfg.motion_tokenizer), cfg.stage.motion_vq, cfg.train.seed
    )


class MotionTokenizerStage(Stage):
    """motion_tokenizer: one engine, the MSE + commitment loss; the codebook by EMA."""

    loss_names = ("loss", "mse", "commit_loss", "perplexity", "usage", "restarts")
    rate_names = {"samples": "clips/s"}

    def __init__(self, cfg: DivotConfig, device: torch.device, dtype: torch.dtype):
        super().__init__(cfg, device, dtype)
        self._images: dict[str, np.ndarray] = {}

    @classmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        return ["motion_tokenizer", "data"]

    def build(self) -> nn.Module:
        if self.cfg.deepspeed.zero_stage == 3:
            raise ConfigError(
                "stage=motion_tokenizer needs deepspeed.zero_stage <= 2: the EMA codebook update reads and "
                "writes whole tensors of the module outside the optimizer"
            )
        self.module = build_motion_objective(self.cfg).to(self.device)
        self.flops_per_clip = self._count_flops_per_clip()
        return self.module

    @property
    def example_spec(self) -> MotionExampleSpec:
        return MotionExampleSpec(motion=self.cfg.data.motion)

    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        build_loader = build_loader or build_motion_loader
        pin = self.device.type == "cuda"
        return build_loader(self.cfg.data, self.example_spec, rank=rank, world_size=world_size, split=split,
                            pin_memory=pin)  # fmt: skip

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"motion": batch["motion"].to(self.device, non_blocking=True).to(self.dtype)}

    def loss_terms(self, out: Any) -> list[torch.Tensor]:
        return [out[name] for name in self.loss_names]

    def step_counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        clips = float(batch["motion"].shape[0])
        flops = clips * self.flops_per_clip
        return flops, flops, {"samples": clips}

    def _count_flops_per_clip(self) -> float:
        """FLOPs of the tokenizer's forward and backward on one field (the EMA update's
        few are not counted), measured by torch; the objective's own forward would move
        the codebook, so the tokenizer's pieces run alone. RNG and gradients come out as
        they went in."""
        tokenizer = self.module.tokenizer
        cfg = self.cfg.motion_tokenizer
        field = torch.zeros(1, cfg.in_channels, cfg.frames, cfg.height, cfg.width, device=self.device)
        with (
            torch.random.fork_rng(devices=rng_devices(self.device)),
            FlopCounterMode(display=False) as counter,
        ):
            z_bnd = tokenizer.encode_latents(field)
            zq_bnd, _ = tokenizer.quantize_latents(z_bnd)
            tokenizer.decode_latents(zq_bnd).float().square().mean().backward()
        for p in self.module.parameters():
            p.grad = None
        return float(counter.get_total_flops())

    # ------------------------------------------------------------------ validation

    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        """The field's MSE, the zero-motion guess's MSE, the commitment term, and the
        perplexity / usage of the histogram of every validation code, over all ranks; a
        strip of rank 0's first ``stage.recon_clips`` fields above their reconstructions."""
        strip_clips = self.cfg.stage.recon_clips
        size = self.module.codebook.shape[0]
        self._images = {}

        def batch_sums(index: int, batch: dict) -> list[float]:
            """clips, then sums over clips of the MSE, the zero guess's MSE and the
            commitment term, then the batch's code histogram (K counts)"""
            motion = self.prepare(batch)["motion"]
            with torch.no_grad():
                out = self.module(motion)
            if index == 0 and strip_clips:
                self._images[STRIP_TAG] = self._strip(motion[:strip_clips], out["recon"][:strip_clips])
            clips = motion.shape[0]
            target = motion.float().flatten(1)
            mse_b = (out["recon"].float().flatten(1) - target).square().mean(1)
            zero_b = target.square().mean(1)
            commit = float(out["commit_loss"]) * clips
            histogram = code_histogram(out["codes"], size).tolist()
            return [float(clips), float(mse_b.sum()), float(zero_b.sum()), commit, *histogram]

        result = zero_safe_sums(engine, val_loader, max_batches, self.device, batch_sums)
        if result is None:
            return None
        (clips, mse, zero, commit, *histogram), count = result
        counts_k = torch.tensor(histogram)
        return {
            "val/mse": mse / clips,
            "val/mse_zero": zero / clips,
            "val/commit_loss": commit / clips,
            "val/perplexity": float(perplexity(counts_k)),
            "val/usage": float((counts_k > 0).float().mean()),
            "val/samples": clips,
            "val/batches": float(count),
        }

    @staticmethod
    def _strip(motion: torch.Tensor, recon: torch.Tensor) -> np.ndarray:
        """Each field's flow-colour strip above its reconstruction's, one sheet.

        ``motion_strip`` draws one colour scale per strip; to draw a field and its
        reconstruction on the same scale (a faint reconstruction must look faint), the
        pair goes in as one clip -- the field's shown frames, then the reconstruction's --
        and the strip is cut in half and stacked."""
        frames = motion.shape[2]
        shown = np.unique(np.linspace(0, frames - 1, min(STRIP_FRAMES, frames)).round().astype(np.int64))
        sheets = []
        for field, rec in zip(motion.float().cpu(), recon.float().cpu(), strict=True):
            pair = torch.cat((field[:, shown], rec[:, shown]), dim=1)
            strip = np.asarray(motion_strip(pair, max_frames=2 * len(shown)))
            half = (strip.shape[1] + STRIP_GAP) // 2  # a tile + its gap, times the shown frames
            sheets += [strip[:, : half - STRIP_GAP], strip[:, half:]]
        gap = np.zeros((STRIP_GAP, sheets[0].shape[1], 3), dtype=np.uint8)  # black, as motion_strip's
        return np.concatenate([part for sheet in sheets for part in (sheet, gap)][:-1])

    def validation_images(self) -> dict[str, np.ndarray]:
        return dict(self._images)
