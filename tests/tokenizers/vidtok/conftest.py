"""Fixtures of the VidTok tests: the parity fixtures VidTok's own code wrote
(``tools/vidtok_fixtures.py``; its deterministic weights and inputs), and tiny configs."""

from __future__ import annotations

import gzip
import json

import pytest

from divot_llm.config import compose_config
from divot_llm.tokenizers.vidtok import VidTokConfig
from tests import helpers

FIXTURES = helpers.REPO_ROOT / "tests" / "fixtures" / "vidtok"


@pytest.fixture(scope="session")
def fixture_tool():
    """tools/vidtok_fixtures.py as a module: ``CASES``, ``fixture_weights``, ``fixture_video``
    (it imports VidTok's code only inside its writer functions)."""
    return helpers.load_tool("tools/vidtok_fixtures.py")


@pytest.fixture(scope="session")
def key_tables() -> dict[str, dict[str, list[int]]]:
    with gzip.open(FIXTURES / "key_tables.json.gz", "rt") as file:
        return json.load(file)


@pytest.fixture(scope="session")
def vidtok_tiny_config() -> VidTokConfig:
    """``video_tokenizer=vidtok_tiny`` composed (once: a composition takes ~0.5 s)."""
    return compose_config(["video_tokenizer=vidtok_tiny"]).video_tokenizer


@pytest.fixture(scope="session")
def vidtok_tiny_fsq_config() -> VidTokConfig:
    """``video_tokenizer=vidtok_tiny_fsq`` composed."""
    return compose_config(["video_tokenizer=vidtok_tiny_fsq"]).video_tokenizer


def tiny_case_config(tool, case: dict) -> VidTokConfig:
    """Our config of one of the fixture script's tiny cases."""
    frames, height, width = case["input_thw"]
    return VidTokConfig(
        pretrained_path=None,
        causal=case["causal"],
        regularizer=case["regularizer"],
        z_channels=tool.TINY["z_channels"],
        fsq_levels=list(tool.TINY["fsq_levels"]),
        ch=case.get("ch", tool.TINY["ch"]),
        norm_type=case.get("norm_type", "layernorm"),
        ch_mult=list(case["ch_mult"]),
        num_res_blocks=tool.TINY["num_res_blocks"],
        input_height=height,
        input_width=width,
        frames_per_clip=frames,
        **tool.FSQ_ENTROPY,
    )
