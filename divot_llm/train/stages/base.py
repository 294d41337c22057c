"""The stage-specific half of training, as one interface (see the package docstring)."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from divot_llm.config.schema import DivotConfig, OptimConfig
from divot_llm.runtime import default_dtype

VAL_SEED = 1234  # validation draws (diffusion noise, timesteps, sampler) are fixed: comparable across steps
MAIN_ENGINE = "main"  # the engine of ``Stage.build``'s module; ``extra_engines`` name the others


class Stage(abc.ABC):
    """What one kind of training stage trains and how (``Trainer`` runs the loop around it).

    Attributes:
        trains_detokenizer: whether the stage trains a de-tokenizer (its checkpoints are
            exported with ``divot-export detokenizer``, not ``divot-merge``).
        samples_prompts: whether the stage generates clips from prompts
            (``sample_clips``: ``train.sample_every``); its export then also carries the
            run's ``config.yaml`` (what encodes a prompt).
        loss_names: names of ``loss_terms`` (of ``forward``); the first is backpropagated
            (see ``backward_terms``), all are logged as ``train/<name>``.
        rate_names: ``step_counts`` keys logged as ``perf/<name>_per_s``, with their short
            progress-bar labels.
        frozen_dtype: the dtype frozen helpers (a video tokenizer, an LLM) run in.
        module: the engine's module, after ``build``.
    """

    trains_detokenizer: ClassVar[bool] = False
    samples_prompts: ClassVar[bool] = False
    loss_names: ClassVar[tuple[str, ...]] = ("loss",)
    rate_names: ClassVar[dict[str, str]] = {"samples": "samp/s"}

    def __init__(self, cfg: DivotConfig, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.frozen_dtype = default_dtype(device)
        self.module: nn.Module | None = None

    @classmethod
    @abc.abstractmethod
    def config_reads(cls, cfg: DivotConfig) -> list[str]:
        """The config keys whose paths a run of this stage reads (``config.paths``); the
        others may name files of another stage."""

    @abc.abstractmethod
    def build(self) -> nn.Module:
        """The engine's module on ``device`` (frozen helpers set up too)."""

    @abc.abstractmethod
    def loader(self, split: str, rank: int, world_size: int, build_loader: Callable | None = None):
        """This rank's loader of a split; ``build_loader`` replaces the stage's default
        builder (same signature), e.g. with hand-made batches in tests."""

    @abc.abstractmethod
    def prepare(self, batch: dict) -> dict[str, Any]:
        """Loader batch -> engine keyword inputs on the device."""

    @abc.abstractmethod
    def loss_terms(self, out: Any) -> list[torch.Tensor]:
        """Scalar tensors in ``loss_names`` order from the engine's output."""

    @abc.abstractmethod
    def step_counts(self, batch: dict) -> tuple[float, float, dict[str, float]]:
        """(model FLOPs, hardware FLOPs, {rate name: count}) of one micro-batch."""

    @abc.abstractmethod
    def validate(self, engine, val_loader, max_batches: int) -> dict[str, float] | None:
        """Validation metrics (collective; None when some rank has no batch)."""

    def extra_engines(self) -> dict[str, tuple[nn.Module, OptimConfig]]:
        """Modules trained next to ``module`` by engines of their own, by name, with their
        optimizer settings (e.g. a GAN's discriminator); after ``build``. The trainer
        builds, steps, checkpoints, resumes and logs them alongside the main engine."""
        return {}

    def forward(self, engines: dict[str, Any], inputs: dict[str, Any], step: int) -> list[torch.Tensor]:
        """The loss terms (``loss_names`` order) of one micro-batch at optimizer step
        ``step`` (0-based): the main engine's forward, by default."""
        return self.loss_terms(engines[MAIN_ENGINE](**inputs))

    def backward_terms(self, step: int) -> dict[str, int]:
        """Engine name -> the index of the loss term it backpropagates at ``step``, in the
        order the engines go backward and step; an engine left out is not updated then."""
        return {MAIN_ENGINE: 0}

    def validation_images(self) -> dict[str, np.ndarray]:
        """Images of the last ``validate`` for TensorBoard, by tag (``(H, W, 3)`` uint8)."""
        return {}

    def sample_clips(
        self, module: nn.Module, prompts: list[str], steps: int | None, seed: int
    ) -> torch.Tensor:
        """One clip per prompt, ``(B, F, 3, H, W)`` in [-1, 1], decoded by ``module`` (the
        trained module or its EMA copy); stages with ``samples_prompts`` only."""
        raise NotImplementedError(f"stage {self.cfg.stage.name} does not generate clips from prompts")

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())
