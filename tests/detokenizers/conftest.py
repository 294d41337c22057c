"""Fixtures for the de-tokenizer tests: the tiny configs from conf/ and modules built from them."""

from __future__ import annotations

import pytest

from divot_llm.config import compose_config
from divot_llm.detokenizers import build_video_detokenizer
from divot_llm.detokenizers.dynamicrafter_config import DynamiCrafterConfig
from divot_llm.tokenizers import build_video_tokenizer
from divot_llm.tokenizers.divot_config import DivotTokenizerConfig


@pytest.fixture(scope="session")
def tiny_config() -> DynamiCrafterConfig:
    """conf/detokenizer/tiny.yaml, composed through Hydra like a real run."""
    return compose_config(["detokenizer=tiny"]).detokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer_config() -> DivotTokenizerConfig:
    return compose_config(["video_tokenizer=divot_tiny"]).video_tokenizer


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_config):
    """A randomly initialised tiny Divot tokenizer (seeded by the autouse seed fixture)."""
    return build_video_tokenizer(tiny_tokenizer_config)


@pytest.fixture
def tiny_detokenizer(tiny_config, tiny_tokenizer):
    """A randomly initialised tiny de-tokenizer whose null features come from the tiny tokenizer."""
    return build_video_detokenizer(tiny_config, tokenizer=tiny_tokenizer)
