"""Data fixtures shared by the data tests: a small synthetic set, a loopback shard server."""

from __future__ import annotations

import pytest

from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset
from tests.data.shard_servers import ShardServer

# 6 train videos (video_comp + video_gen), 2 held-out, 4 images (image_comp + image_gen)
SMALL_COUNTS = SyntheticCounts(train_videos=6, val_videos=2, images=4)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    """A small synthetic set (read only: tests that damage it copy it first)."""
    root = tmp_path_factory.mktemp("small_synthetic") / "synthetic"
    write_synthetic_dataset(root, seed=4, counts=SMALL_COUNTS)
    return root


@pytest.fixture(scope="session")
def shard_server(tmp_path_factory):
    """A loopback HTTP server of everything under pytest's temporary folder."""
    server = ShardServer(tmp_path_factory.getbasetemp())
    yield server
    server.stop()
