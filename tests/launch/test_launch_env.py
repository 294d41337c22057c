"""``launch/common.sh``'s GPU environment: defaults where the caller set nothing, the
caller's own values kept (each launch script and ``tools/bench/gpu_7b.sh`` use it)."""

from __future__ import annotations

import os
import subprocess

from tests import helpers

NAMES = (
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_ALLOC_CONF",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
    "TORCH_NCCL_TRACE_BUFFER_SIZE",
    "TORCH_NCCL_DUMP_ON_TIMEOUT",
    "NCCL_DEBUG",
)


def gpu_env(**preset: str) -> dict[str, str]:
    """What a child of ``divot_gpu_env`` sees of NAMES (exported only)."""
    env = {k: v for k, v in os.environ.items() if k not in NAMES} | preset
    script = "source launch/common.sh && divot_gpu_env && env -0"
    out = subprocess.run(
        ["bash", "-c", script], cwd=helpers.REPO_ROOT, env=env, capture_output=True, check=True
    )
    pairs = (item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    return {k: v for k, v in pairs if k in NAMES}


def test_defaults_when_nothing_is_set():
    assert gpu_env() == {
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
        "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
        "NCCL_DEBUG": "WARN",
    }


def test_the_callers_settings_are_kept():
    mine = {
        "PYTORCH_ALLOC_CONF": "max_split_size_mb:512",
        "NCCL_DEBUG": "INFO",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
    }
    got = gpu_env(**mine)
    assert "PYTORCH_CUDA_ALLOC_CONF" not in got  # the newer name counts as set
    assert {k: got[k] for k in mine} == mine
    assert (
        gpu_env(PYTORCH_CUDA_ALLOC_CONF="backend:cudaMallocAsync")["PYTORCH_CUDA_ALLOC_CONF"]
        == "backend:cudaMallocAsync"
    )
