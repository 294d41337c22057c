"""The interface every video de-tokenizer implements.

A de-tokenizer turns the continuous features of one clip (from the frozen tokenizer, or
sampled from the LLM's GMM head) back into frames. It is conditioned on the features and
trained with a loss on real clips, so unlike the tokenizer it is a trainable module:
``forward`` is its training loss, and ``decode`` samples under ``no_grad`` in eval mode.

Classifier-free guidance needs "no conditioning" features. Divot uses the tokenizer's
features of an all-zero clip (grey frames); for a frozen tokenizer that is one constant
``(N, D)`` tensor, stored with the de-tokenizer (``set_null_features``) so inference does
not need the tokenizer.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from divot_llm.layout import DETOKENIZER_CONFIG
from divot_llm.runtime import eval_mode
from divot_llm.tokenizers.base import PretrainedComponent, VideoTokenizer

T = TypeVar("T", bound="VideoDetokenizer")


class VideoDetokenizer(PretrainedComponent):
    """Features ``(B, N, D)`` -> video ``(B, F, 3, H, W)`` in [-1, 1].

    The video layout is the tokenizer's input layout (frames before channels), so
    ``tokenizer.encode(detokenizer.decode(feats)[:, positions])`` needs no permute.
    Subclasses implement the construction, ``_decode``, ``loss`` and the shape members;
    their ``save_pretrained`` writes the null features with the weights.
    """

    config_file = DETOKENIZER_CONFIG
    null_features: torch.Tensor | None  # (N, D) features of an all-zero clip; a buffer

    # ---------------------------------------------------------------- construction

    @classmethod
    @abc.abstractmethod
    def from_config(cls: type[T], config: Any, tokenizer: VideoTokenizer | None = None) -> T:
        """Build the de-tokenizer and load the weights the config points to; with a
        tokenizer, also set its zero-clip features as the unconditional features."""

    # ---------------------------------------------------------------------- shapes

    @property
    @abc.abstractmethod
    def num_frames(self) -> int:
        """F: frames per decoded clip."""

    @property
    @abc.abstractmethod
    def image_size(self) -> int:
        """Side (H = W) of the decoded frames."""

    @property
    @abc.abstractmethod
    def feature_dim(self) -> int:
        """D: width of the features it is conditioned on."""

    @property
    @abc.abstractmethod
    def fps(self) -> int:
        """Frame rate the decoded clip is meant to play at."""

    # ----------------------------------------------------------- null features

    def set_null_features(self, features: torch.Tensor) -> None:
        """Set the unconditional features: ``(N, D)`` or ``(1, N, D)``, e.g. from
        ``zero_clip_features(tokenizer)``."""
        features = features.detach()
        if features.ndim == 3 and features.shape[0] == 1:
            features = features[0]
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise ValueError(f"null features must be (N, {self.feature_dim}), got {tuple(features.shape)}")
        self.null_features = features.to(device=self.device, dtype=self.dtype).clone()

    def null_features_like(self, features_bnd: torch.Tensor) -> torch.Tensor:
        """The null features broadcast to ``features_bnd``'s shape.

        Raises:
            ValueError: none set, or a different token count.
        """
        if self.null_features is None:
            raise ValueError(
                "unconditional (zero-clip) features are not set: build with from_config(..., tokenizer=...) "
                "or call set_null_features(zero_clip_features(tokenizer)); guidance=1 needs none"
            )
        if self.null_features.shape[0] != features_bnd.shape[1]:
            raise ValueError(
                f"null features have {self.null_features.shape[0]} tokens, features have {features_bnd.shape[1]}"
            )
        return self.null_features.to(features_bnd.dtype).expand_as(features_bnd)

    # -------------------------------------------------------------------- decoding

    def decode(
        self,
        features: torch.Tensor,
        steps: int | None = None,
        guidance: float | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Sample a clip per feature set.

        Args:
            features: ``(B, N, D)`` features; moved to the module's device and dtype.
            steps: sampler steps; the config's when None.
            guidance: classifier-free guidance scale; the config's when None (1 turns it off).
            seed: seed of every random draw (drawn on the CPU, so any device gives the same
                sample); a random one when None.

        Returns:
            ``(B, F, 3, H, W)`` frames in [-1, 1], fp32, no autograd history.

        Raises:
            ValueError: ``features`` is not ``(B, N, D)`` floats with ``D == feature_dim``.
        """
        self._check_features(features)
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        with torch.no_grad(), eval_mode(self):
            video = self._decode(
                features.to(device=self.device, dtype=self.dtype), steps, guidance, generator
            )
        return video.float().clamp(-1, 1)

    @abc.abstractmethod
    def _decode(
        self,
        features_bnd: torch.Tensor,
        steps: int | None,
        guidance: float | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``(B, N, D)`` -> ``(B, F, 3, H, W)``; called under ``no_grad`` in eval mode."""

    # -------------------------------------------------------------------- training

    @abc.abstractmethod
    def loss(
        self,
        video: torch.Tensor,
        features: torch.Tensor,
        cond_drop_prob: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The diffusion training loss of clips given their conditioning features.

        Args:
            video: ``(B, F, 3, H, W)`` clips in [-1, 1].
            features: ``(B, N, D)`` conditioning features (gradients flow into them).
            cond_drop_prob: share of clips conditioned on the null features instead
                (classifier-free guidance dropout); the config's when None.
            generator: CPU generator for every random draw; the global RNG when None.

        Returns:
            Scalar loss.
        """

    def forward(self, video: torch.Tensor, features: torch.Tensor, **kwargs) -> torch.Tensor:
        """The training loss (``loss``), so a training engine can wrap the module directly."""
        return self.loss(video, features, **kwargs)

    def _check_clips(self, video: torch.Tensor, features: torch.Tensor) -> None:
        """``loss``'s inputs: clips of the configured length and size, and their features.

        Raises:
            ValueError: bad feature shape, or clip size/length other than the config's.
        """
        self._check_features(features)
        expected = (self.num_frames, 3, self.image_size, self.image_size)
        if video.ndim != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(f"expected clips (B, {', '.join(map(str, expected))}), got {tuple(video.shape)}")

    def _check_features(self, features: torch.Tensor) -> None:
        expected = f"(B, N, D={self.feature_dim}) floating-point features"
        if not isinstance(features, torch.Tensor) or not features.is_floating_point():
            raise ValueError(
                f"expected {expected}, got {getattr(features, 'dtype', type(features).__name__)}"
            )
        if features.ndim != 3 or features.shape[-1] != self.feature_dim:
            raise ValueError(f"expected {expected}, got shape {tuple(features.shape)}")


def random_draw(generator: torch.Generator | None, device: torch.device) -> Callable[..., torch.Tensor]:
    """``draw(torch.randn, shape)``: a tensor on ``device``, drawn on the CPU from
    ``generator`` when one is given (the same values on any device: seeded validation
    losses), else on ``device`` from its default generator."""

    def draw(fn: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        if generator is None:
            return fn(*args, device=device, **kwargs)
        return fn(*args, generator=generator, **kwargs).to(device)

    return draw


def zero_clip_features(tokenizer: VideoTokenizer) -> torch.Tensor:
    """The tokenizer's features of one all-zero (grey) clip, ``(N, D)``: Divot's
    unconditional input for classifier-free guidance."""
    size = tokenizer.input_size
    zeros = torch.zeros(
        1, tokenizer.frames_per_clip, 3, size, size, device=tokenizer.device, dtype=tokenizer.dtype
    )
    return tokenizer.encode(zeros)[0]
