"""Tiny Divot models built through the real config and build path."""

from __future__ import annotations

import pytest
import torch

from divot_llm.config.loading import compose_config
from divot_llm.model import build_divot_llm
from divot_llm.text import DivotTextTokenizer


@pytest.fixture(scope="session")
def tiny_cfg():
    """The default (demo) composition: tiny Mistral, tiny Divot tokenizer shape."""
    return compose_config()


@pytest.fixture(scope="session")
def feat_shape(tiny_cfg):
    """(N tokens per clip, D feature dim) of the tiny video tokenizer."""
    return tiny_cfg.video_tokenizer.num_tokens, tiny_cfg.video_tokenizer.feature_dim


@pytest.fixture(scope="session")
def text_tokenizer(mistral_tokenizer_dir):
    return DivotTextTokenizer.from_pretrained(mistral_tokenizer_dir)


@pytest.fixture
def make_model(tiny_cfg, feat_shape):
    """Build a tiny DivotLLM (random, seeded) with the stage flags given."""

    def make(seed: int = 0, **kwargs):
        torch.manual_seed(seed)
        n, d = feat_shape
        return build_divot_llm(tiny_cfg.model, feature_tokens=n, feature_dim=d, **kwargs)

    return make
