"""Choosing a tokenizer by config: the registry and config conversion."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from divot_llm.config import ConfigError, compose_config
from divot_llm.tokenizers import VideoTokenizer, build_video_tokenizer, register_video_tokenizer, registry
from divot_llm.tokenizers.divot import DivotTokenizer
from divot_llm.tokenizers.divot_config import DivotTokenizerConfig
from tests.tokenizers import tiny


def test_default_config_builds_the_tiny_divot_tokenizer():
    cfg = compose_config()
    tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    assert isinstance(tokenizer, DivotTokenizer)
    assert (tokenizer.frames_per_clip, tokenizer.num_tokens, tokenizer.feature_dim, tokenizer.input_size) == (
        5,
        8,
        16,
        64,
    )
    assert tokenizer.encode(tiny.random_clips(tokenizer.config)).shape == (2, 8, 16)


def test_real_config_needs_weight_paths():
    cfg = compose_config(["video_tokenizer=divot"])
    with pytest.raises(ConfigError, match="video_tokenizer.pretrained_path must be set"):
        build_video_tokenizer(cfg.video_tokenizer)


def test_config_built_in_code_still_needs_weight_paths():
    with pytest.raises(ConfigError, match="video_tokenizer.pretrained_path must be set"):
        build_video_tokenizer(DivotTokenizerConfig())


def test_unknown_arch_and_unknown_keys_are_errors():
    with pytest.raises(
        ValueError, match="unknown video tokenizer arch 'magvit'.*divot_llm/tokenizers/magvit.py"
    ):
        build_video_tokenizer({"arch": "magvit"})
    with pytest.raises(ConfigError, match=r"unknown keys for DivotTokenizerConfig: \['num_token'\]"):
        build_video_tokenizer({"arch": "divot", "num_token": 8})


def test_a_registered_tokenizer_is_built_from_its_arch_name(monkeypatch):
    """What a new tokenizer file does: subclass VideoTokenizer and register an arch."""
    monkeypatch.setattr(registry.VIDEO_TOKENIZERS, "_classes", dict(registry.VIDEO_TOKENIZERS._classes))

    @dataclasses.dataclass
    class MeanPatchConfig:
        arch: str = "mean_patch"
        dim: int = 6

    @register_video_tokenizer("mean_patch")
    class MeanPatchTokenizer(VideoTokenizer):
        """Average 8x8 patches over time, then project: a minimal complete tokenizer."""

        config_class = MeanPatchConfig

        def __init__(self, config: MeanPatchConfig) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(3 * 64, config.dim)
            self.freeze()

        @classmethod
        def from_config(cls, config):
            return cls(config)

        @classmethod
        def from_pretrained(cls, path):
            raise NotImplementedError

        def save_pretrained(self, path):
            raise NotImplementedError

        frames_per_clip = property(lambda self: 2)
        num_tokens = property(lambda self: 4)
        feature_dim = property(lambda self: self.proj.out_features)
        input_size = property(lambda self: 16)

        def _encode(self, frames_bfchw):
            patches = frames_bfchw.mean(1).unfold(2, 8, 8).unfold(3, 8, 8)  # (B, 3, 2, 2, 8, 8)
            return self.proj(patches.permute(0, 2, 3, 1, 4, 5).reshape(frames_bfchw.shape[0], 4, -1))

    with pytest.raises(ValueError, match="already registered"):
        register_video_tokenizer("mean_patch")(DivotTokenizer)
    tokenizer = build_video_tokenizer({"arch": "mean_patch"})
    assert isinstance(tokenizer, MeanPatchTokenizer)
    assert not any(p.requires_grad for p in tokenizer.parameters())
    assert tokenizer.encode(torch.zeros(3, 2, 3, 16, 16)).shape == (3, 4, 6)
    with pytest.raises(ValueError, match="expected 2 frames per clip, got 5"):
        tokenizer.encode(torch.zeros(3, 5, 3, 16, 16))
