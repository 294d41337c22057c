"""Shared test set-up: CPU DeepSpeed without JIT builds, markers, tiny fixtures."""

from __future__ import annotations

import atexit
import gc
import os

# One OpenMP thread per process, set before torch is imported and inherited by every
# process a test starts. Tiny matmuls gain nothing from more, and the in-process trainer
# (distributed.init_distributed) would otherwise give itself every core: next to the
# other pytest-xdist worker and its 2-rank runs, spinning OpenMP threads made in-process
# training tests 5-8x slower (de-tokenizer stages: 13 s alone, 107 s beside the demo).
os.environ.setdefault("OMP_NUM_THREADS", "1")

# No exit-time garbage collection over everything torch, transformers and DeepSpeed made:
# a pytest process took ~5 s to exit after the tests, ~1 s with this (as divot-train).
atexit.register(gc.freeze)

import pytest  # noqa: E402
import torch  # noqa: E402

# Before DeepSpeed is imported anywhere: pick the CPU accelerator explicitly on CPU-only
# machines (on a GPU box DeepSpeed detects CUDA itself).
if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import divot_llm  # noqa: E402,F401  (applies the torchvision shim before anything else)
from tests import helpers  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # The longest tests start first: under `pytest -n 2 --dist worksteal` (make test) the
    # rest of the suite then runs beside them instead of after them (the other worker
    # steals the tests queued behind them).
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)  # stable
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # the marker, not `"gpu" in item.keywords`: keywords also hold the names of the
        # folders above, and a checkout in a folder named gpu skipped every test
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _fixed_seed_one_thread():
    """Every test starts from seed 0 on one intra-op thread: tiny matmuls run ~1000x
    slower with 2 OpenMP threads than with 1 on small CPU boxes (thread wake-up dominates
    a 64-wide GEMM), and nothing here is big enough to gain from more."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ds_process_group():
    """One single-rank gloo process group for the whole pytest process, so DeepSpeed
    engines can be built in-process.

    It is never torn down: DeepSpeed caches its groups, and a re-initialised group breaks
    the next ZeRO-3 engine ("Group ... is not registered"). The shm-comm op is disabled
    to skip its ~70 s JIT build; gloo does every collective. Tests pass a client
    ``torch.optim`` optimizer so no fused/cpu Adam op gets built either.
    """
    import deepspeed
    import deepspeed.ops
    import torch.distributed as dist

    from divot_llm.train.engine import skip_deepspeed_muon

    if not dist.is_initialized():
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(helpers.free_port()),
        )
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="gloo")
    skip_deepspeed_muon()  # engines built here without build_engine start as fast too
    yield dist


@pytest.fixture(scope="session")
def mistral_tokenizer_dir(tmp_path_factory):
    """Folder with the real Mistral v0.1 tokenizer.model."""
    return helpers.build_tokenizer_dir(tmp_path_factory.mktemp("mistral_tokenizer"))


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory):
    """A saved random tiny Mistral (HF folder, real 32000-token vocabulary)."""
    return helpers.build_tiny_mistral_dir(tmp_path_factory.mktemp("tiny_mistral"))


@pytest.fixture(scope="session")
def lpips_files(tmp_path_factory) -> helpers.LpipsFiles:
    """Random LPIPS weights in the layouts of the files users download (torchvision's
    vgg16 state dict, taming-transformers' vgg.pth)."""
    return helpers.save_random_lpips(tmp_path_factory.mktemp("lpips"))


@pytest.fixture(scope="session")
def i3d_file(tmp_path_factory):
    """A tiny TorchScript I3D called as StyleGAN-V's i3d_torchscript.pt."""
    return helpers.save_tiny_i3d(tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt")


# ----------------------------------------------------------- two-rank training runs
# The demo config on 2 ranks over a small synthetic set, 30 steps (tests.train.conftest
# PRETRAIN) of ZeRO-2 and then of ZeRO-3, in one launch under torchrun;
# ``<run>/live.pt`` holds the parameters the live engine had after its last checkpoint.
# Export, merge and inference tests all start from these checkpoints.


@pytest.fixture(scope="session")
def export_data(tmp_path_factory):
    from divot_llm.data.synthetic import write_synthetic_dataset
    from tests.train.conftest import COUNTS

    root = tmp_path_factory.mktemp("export_data") / "synthetic"
    write_synthetic_dataset(root, seed=4, counts=COUNTS)
    return root


@pytest.fixture(scope="session")
def zero_runs(export_data, tmp_path_factory):
    """``<out>/zero2`` and ``<out>/zero3``: both runs in one launch (one interpreter and
    DeepSpeed start-up per rank for the two, ~14 CPU-s less than a launch each), ZeRO-2
    first -- the same losses as a launch of its own, which the resume test compares to."""
    from tests.train.conftest import PRETRAIN

    out = tmp_path_factory.mktemp("zero_runs")
    helpers.run_command(
        [
            helpers.PYTHON, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={helpers.free_port()}", "-m", "tests.export.live_run",
            str(export_data), str(out), "2,3", *PRETRAIN,
        ],
        cwd=helpers.REPO_ROOT,
        timeout=600,
    )  # fmt: skip
    return out


@pytest.fixture(scope="session")
def zero2_run(zero_runs):
    """Also the launch tests' ZeRO-2 run: learning check, resume reference, release source."""
    return zero_runs / "zero2"


@pytest.fixture(scope="session")
def zero3_run(zero_runs):
    """The ZeRO-3 run is also the launch tests' ZeRO-3 learning check: one launch for both."""
    return zero_runs / "zero3"


@pytest.fixture(scope="session")
def tiny_release(zero2_run, tmp_path_factory):
    """The verified fp32 release (divot-merge) of the ZeRO-2 run."""
    from divot_llm.cli.merge import main as merge_main

    out = tmp_path_factory.mktemp("tiny_release") / "pretrain"
    # in this process: tests/export/test_merge.py runs the console script itself
    assert merge_main(["--checkpoint", str(zero2_run), "--out", str(out), "--verify"]) == 0
    return out
