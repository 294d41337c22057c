"""Fixtures for the tokenizer tests: the divot_tiny config from conf/ and a tokenizer built from it."""

from __future__ import annotations

import pytest

from divot_llm.config import compose_config
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.tokenizers.divot_config import DivotTokenizerConfig


@pytest.fixture(scope="session")
def tiny_config() -> DivotTokenizerConfig:
    """conf/video_tokenizer/divot_tiny.yaml, composed through Hydra like a real run."""
    return compose_config(["video_tokenizer=divot_tiny"]).video_tokenizer


@pytest.fixture
def tiny_tokenizer(tiny_config):
    """A randomly initialised tiny Divot tokenizer (seeded by the autouse seed fixture)."""
    return build_video_tokenizer(tiny_config)
