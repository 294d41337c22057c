"""The interface every frozen video tokenizer implements, and what it shares with the
de-tokenizers (``PretrainedComponent``).

A video tokenizer turns clips of frames into a fixed number of continuous feature
vectors. The LLM reads these features (comprehension) and regresses them (generation),
so the tokenizer is never trained here: it is always frozen, in eval mode, and runs under
``no_grad``. Its dtype and device are the caller's choice (``tokenizer.to(device, dtype)``).
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from divot_llm.layout import TOKENIZER_CONFIG

P = TypeVar("P", bound="PretrainedComponent")
T = TypeVar("T", bound="VideoTokenizer")


class PretrainedComponent(nn.Module, abc.ABC):
    """A module built from a config dataclass and saved as a folder: what video tokenizers
    and de-tokenizers share (``detokenizers/`` imports ``tokenizers/``, so it lives here).

    ``from_config`` builds from an instance of ``config_class`` (kept as ``self.config``);
    ``save_pretrained`` writes ``config_file`` (the config as json, its ``arch`` naming
    the class for the registry) plus the weights, and ``from_pretrained`` reads them back.
    The helpers ``_save_config`` / ``_saved_config`` do the config half of that.
    """

    config_class: ClassVar[type]  # the dataclass ``from_config`` takes; also its options' yaml schema
    config_file: ClassVar[str]  # the json ``save_pretrained`` writes (``divot_llm.layout``)
    config: Any  # an instance of ``config_class``

    @classmethod
    @abc.abstractmethod
    def from_pretrained(cls: type[P], path: str | os.PathLike) -> P:
        """Load a folder written by ``save_pretrained``."""

    @abc.abstractmethod
    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config and weights to the folder ``path`` (created if needed)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _save_config(self, path: str | os.PathLike, **replaced: Any) -> Path:
        """Create the folder ``path`` and write ``config_file`` into it; ``replaced`` fields
        (weights paths, which name files of this machine) are written with those values.
        Returns the folder."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        fields = dataclasses.asdict(self.config) | replaced
        (folder / self.config_file).write_text(json.dumps(fields, indent=2) + "\n")
        return folder

    @classmethod
    def _saved_config(cls, path: str | os.PathLike, **replaced: Any) -> Any:
        """The ``config_class`` instance a ``save_pretrained`` folder holds, with the
        ``replaced`` fields (its weights paths, now inside that folder) set."""
        fields = json.loads((Path(path) / cls.config_file).read_text())
        return cls.config_class(**(fields | replaced))


def state_dict_mismatch(own: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> str | None:
    """What keeps ``weights`` from loading strictly into a module whose state dict is ``own``
    -- keys missing, keys unexpected, tensors of other shapes (e.g. a config that is not the
    file's), each kind counted and the first few named -- or None when they fit."""
    missing = sorted(own.keys() - weights.keys())
    unexpected = sorted(weights.keys() - own.keys())
    reshaped = [
        f"{key} {tuple(weights[key].shape)} (model {tuple(own[key].shape)})"
        for key in sorted(own.keys() & weights.keys())
        if weights[key].shape != own[key].shape
    ]
    problems = [
        f"{len(items)} {kind}: {', '.join(items[:6])}{', ...' if len(items) > 6 else ''}"
        for kind, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("other shapes", reshaped),
        )
        if items
    ]
    return "; ".join(problems) or None


def config_value(name: str) -> property:
    """A read-only property that is ``self.config.<name>``: the shape members of a component
    whose config states them."""
    return property(lambda self: getattr(self.config, name), doc=f"``self.config.{name}``")


class VideoTokenizer(PretrainedComponent):
    """A frozen video tokenizer: ``encode(frames (B, F, 3, H, W)) -> features (B, N, D)``.

    Subclasses build their modules in ``__init__``, call ``self.freeze()`` at its end and
    implement ``_encode``, ``from_config`` plus the loading/saving and shape members.
    ``encode`` checks the input layout, so every tokenizer rejects bad input with the same
    message.
    """

    config_file = TOKENIZER_CONFIG

    @classmethod
    @abc.abstractmethod
    def from_config(cls: type[T], config: Any) -> T:
        """Build the tokenizer and load the weights the config points to."""

    @classmethod
    def for_cached_features(cls: type[T], config: Any) -> T:
        """The tokenizer as a run from a feature cache needs it: the shape members and
        the weights ``feature_cache.expected_info`` identifies it by; it need not encode.
        A tokenizer with a separate frozen per-frame encoder (Divot's ViT, by far its
        largest part) leaves that out -- neither read nor allocated; by default this is
        the whole tokenizer."""
        return cls.from_config(config)

    @property
    def frame_encoder(self) -> nn.Module | None:
        """The separate per-frame image encoder (Divot's ViT) when built, else None. A
        feature cache identifies it apart from the rest, which a run from the cache holds
        (``feature_cache.tokenizer_fingerprint``)."""
        return None

    # ---------------------------------------------------------------------- shapes

    @property
    @abc.abstractmethod
    def frames_per_clip(self) -> int:
        """F: frames per clip ``encode`` expects."""

    @property
    @abc.abstractmethod
    def num_tokens(self) -> int:
        """N: feature vectors per clip."""

    def fewer_tokens_hint(self, max_tokens: int) -> str:
        """How to set this tokenizer up for at most ``max_tokens`` feature vectors per clip,
        in words: the advice of the error an LLM that reads one token per feature vector
        raises when N is more than its frame tokens (``divot_llm.model.llm_tokens_per_clip``)."""
        return f"use a video tokenizer with at most {max_tokens} tokens per clip"

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """D: width of each feature vector."""

    @property
    def feature_levels(self) -> list[int] | None:
        """None: continuous features; else a list of length D: feature dim i holds an
        integer code digit in [0, L_i), stored as a float."""
        return None

    @property
    @abc.abstractmethod
    def input_size(self) -> int:
        """Frame side (H = W) the tokenizer was trained on; the data pipeline should
        produce frames of this size."""

    # -------------------------------------------------------------------- freezing

    def freeze(self: T) -> T:
        """No parameter requires grad and the module is in eval mode (for good: see ``train``)."""
        self.requires_grad_(False)
        return super().train(False)

    def train(self: T, mode: bool = True) -> T:
        # A parent's ``.train()`` reaches this module too; a frozen tokenizer stays in
        # eval mode so that dropout or similar never changes its features.
        return super().train(False)

    # -------------------------------------------------------------------- encoding

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """Features of a batch of clips.

        Args:
            frames: ``(B, F, 3, H, W)`` floating-point frames in [-1, 1], with
                ``F == frames_per_clip``. Moved to the tokenizer's device.

        Returns:
            ``(B, N, D)`` features in the tokenizer's dtype, without autograd history.

        Raises:
            ValueError: when ``frames`` is not laid out as ``(B, F, 3, H, W)`` floats.
        """
        self._check_frames(frames)
        # no_grad rather than inference_mode: the features are later used as regression
        # targets, and inference tensors cannot be saved for backward.
        with torch.no_grad():
            return self._encode(frames.to(device=self.device))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encode(frames)

    @abc.abstractmethod
    def _encode(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        """``(B, F, 3, H, W)`` in [-1, 1] -> ``(B, N, D)``; called under ``no_grad``."""

    def _check_frames(self, frames: torch.Tensor) -> None:
        expected = f"(B, F={self.frames_per_clip}, 3, H, W) floating-point frames in [-1, 1]"
        if not isinstance(frames, torch.Tensor):
            raise ValueError(f"expected a tensor of {expected}, got {type(frames).__name__}")
        if frames.ndim != 5 or frames.shape[2] != 3:
            hint = (
                " (channels-last? permute to (B, F, 3, H, W))"
                if frames.ndim and frames.shape[-1] == 3
                else ""
            )
            raise ValueError(f"expected {expected}, got shape {tuple(frames.shape)}{hint}")
        if frames.shape[1] != self.frames_per_clip:
            raise ValueError(
                f"expected {self.frames_per_clip} frames per clip, got {frames.shape[1]} "
                f"(shape {tuple(frames.shape)}); the data pipeline samples clips for this tokenizer"
            )
        if not frames.is_floating_point():
            raise ValueError(
                f"expected {expected}, got dtype {frames.dtype} (uint8 frames need x / 127.5 - 1)"
            )


class LatentVideoTokenizer(VideoTokenizer):
    """A video tokenizer that is an autoencoder (VidTok): besides ``encode`` (features for
    the LLM) it maps frames to latents -- continuous ``(B, C, T', h, w)`` or, when it has a
    codebook, indices ``(B, T', h, w)`` int64 -- and back to frames. All take and return
    the public ``(B, F, 3, H, W)`` frames in [-1, 1]; frame counts follow the model's rule
    (``is_causal``: 1 + k * temporal_factor, else k * temporal_factor) except in
    ``reconstruct``, which takes any length and size and returns the same shape.
    Frozen like every tokenizer: no autograd history, deterministic (a posterior's mode).
    """

    @property
    @abc.abstractmethod
    def temporal_factor(self) -> int:
        """Frames per latent frame (after the causal first frame)."""

    @property
    @abc.abstractmethod
    def spatial_factor(self) -> int:
        """Pixels per latent position along H and W."""

    @property
    @abc.abstractmethod
    def latent_channels(self) -> int:
        """C of the latents."""

    @property
    @abc.abstractmethod
    def is_causal(self) -> bool:
        """True: the first frame is encoded alone and no latent sees later frames."""

    @property
    @abc.abstractmethod
    def levels(self) -> list[int] | None:
        """Values per latent channel of a finite scalar codebook; None when continuous."""

    @property
    @abc.abstractmethod
    def codebook_size(self) -> int | None:
        """Number of discrete codes (the product of ``levels``); None when continuous."""

    @abc.abstractmethod
    def encode_latents(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        """``(B, F, 3, H, W)`` -> ``(B, C, T', h, w)`` latents (quantized codes if discrete)."""

    @abc.abstractmethod
    def decode_latents(self, latents_bcthw: torch.Tensor) -> torch.Tensor:
        """``(B, C, T', h, w)`` -> ``(B, F, 3, H, W)`` frames (unclamped)."""

    @abc.abstractmethod
    def encode_indices(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        """``(B, F, 3, H, W)`` -> ``(B, T', h, w)`` int64 code indices.

        Raises:
            ValueError: the tokenizer is continuous (``codebook_size`` is None).
        """

    @abc.abstractmethod
    def decode_indices(self, indices_bthw: torch.Tensor) -> torch.Tensor:
        """``(B, T', h, w)`` code indices -> ``(B, F, 3, H, W)`` frames.

        Raises:
            ValueError: the tokenizer is continuous.
        """

    @abc.abstractmethod
    def decode_features(self, feats_bnd: torch.Tensor) -> torch.Tensor:
        """``(B, N, D)`` features in ``encode``'s layout (what the LLM generates) ->
        ``(B, F, 3, H, W)`` frames (unclamped): the exact inverse of ``encode``'s layout;
        code digits (``feature_levels``) are rounded and clamped to [0, L_i) first."""

    @abc.abstractmethod
    def reconstruct(self, frames_bfchw: torch.Tensor) -> torch.Tensor:
        """Encode and decode a video of any length and frame size, in chunks; the output
        has the input's shape."""


def still_clips(frames_bf: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: which clips of ``frames (B, F, ...)`` (any dtype and device) have F
    identical frames -- a still image sampled as a clip (``clip_sampling.image_clip``), or
    a video shorter than one frame per slot -- so a per-frame encoder needs only one.

    Compared one frame at a time against the first: the temporary is a frame's size."""
    first = frames_bf[:, 0]
    still_b = torch.ones(frames_bf.shape[0], dtype=torch.bool, device=frames_bf.device)
    for index in range(1, frames_bf.shape[1]):
        still_b &= (frames_bf[:, index] == first).flatten(1).all(dim=1)
    return still_b
