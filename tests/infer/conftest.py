from __future__ import annotations

import pytest

from divot_llm.data.synthetic import encode_synthetic_video, sample_video_spec


@pytest.fixture(scope="session")
def synthetic_video(tmp_path_factory):
    """A 14.5-s, 8-fps h264 synthetic video (a real encoded file)."""
    spec = sample_video_spec(0, "train", 0)
    path = tmp_path_factory.mktemp("media") / f"{spec.key}.{spec.extension}"
    path.write_bytes(encode_synthetic_video(spec))
    return path
