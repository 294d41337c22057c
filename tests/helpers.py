"""Builders for the tiny, on-the-fly fixtures tests load through the real loading code.

Nothing here is downloaded: the Mistral tokenizer comes from the ``mistral-common``
package data, models are random and tiny.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_tool(relative: str):
    """A script under the repository (``tools/bench/data.py``) imported as a module, so a
    test calls its functions and ``main`` in-process."""
    path = REPO_ROOT / relative
    spec = importlib.util.spec_from_file_location(f"tool_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# Mistral-7B v0.1's tokenizer.model, shipped inside mistral-common (32000 pieces).
MISTRAL_V1_TOKENIZER = "tokenizer.model.v1"

TINY_MISTRAL = dict(
    vocab_size=32000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    sliding_window=None,
)


def mistral_tokenizer_model() -> Path:
    """Path of the real Mistral v0.1 SentencePiece model file."""
    path = importlib.resources.files("mistral_common") / "data" / MISTRAL_V1_TOKENIZER
    return Path(str(path))


def build_tokenizer_dir(out_dir: str | os.PathLike) -> Path:
    """A folder holding the real Mistral ``tokenizer.model`` (loadable by LlamaTokenizer)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_tokenizer_model(), out / "tokenizer.model")
    return out


def build_tiny_mistral_dir(out_dir: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """Save a random tiny ``MistralForCausalLM`` as an HF folder (safetensors)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    config = MistralConfig(**{**TINY_MISTRAL, **overrides})
    model = MistralForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_distributed_env(**extra: str) -> dict[str, str]:
    """Environment for multi-process CPU runs: gloo, one thread per rank (2 ranks x the
    default thread count would oversubscribe a 2-core machine)."""
    env = dict(os.environ)
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), **extra)
    return env


def run_command(args: list[str], cwd: str | os.PathLike | None = None, timeout: float = 600, **env: str):
    """Run a command to completion; on failure raise with its output (for readable tests)."""
    proc = subprocess.run(
        args, cwd=cwd, env=cpu_distributed_env(**env), capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(map(str, args))}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


PYTHON = sys.executable


def run_entry_point(
    *args: str, check: bool = True, cwd: str | os.PathLike | None = None, timeout: float = 600
):
    """Run a console script (``divot-export ...``) as users do: the venv's executable."""
    script = Path(sys.executable).parent / args[0]
    proc = subprocess.run(
        [str(script), *args[1:]], cwd=cwd or REPO_ROOT, env=cpu_distributed_env(),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n--- stdout ---\n{proc.stdout[-4000:]}\n"
            f"--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


def run_main(main, *args: str, capsys, check: bool = True):
    """Call a CLI's ``main(argv)`` in this process (no interpreter start-up per call);
    returns ``(exit code, stdout, stderr)``. Tests that need the installed console script
    itself use ``run_entry_point``."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    if check and code != 0:
        raise AssertionError(f"{' '.join(args)} exited {code}:\n{out[-4000:]}\n{err[-4000:]}")
    return code, out, err


# ------------------------------------------------- metric weights (divot_llm.metrics)


@dataclass(frozen=True)
class LpipsFiles:
    vgg: Path  # torchvision's vgg16 state dict layout
    heads: Path  # taming-transformers' vgg.pth keys
    model: Any  # the LPIPS module whose weights the files hold


def save_random_lpips(folder: str | os.PathLike, seed: int = 1) -> LpipsFiles:
    """A random LPIPS saved as the two files users download: ``vgg16.pth`` (``features.N.*``
    plus a classifier key, as torchvision's file has) and ``vgg.pth`` (``linK.model.1.weight``)."""
    import torch

    from divot_llm.metrics import LPIPS

    torch.manual_seed(seed)
    model = LPIPS()
    folder = Path(folder)
    vgg = {f"features.{k}": v for k, v in model.vgg.features.state_dict().items()}
    vgg["classifier.6.bias"] = torch.zeros(1000)  # unused by LPIPS
    torch.save(vgg, folder / "vgg16.pth")
    torch.save(model.heads.state_dict(), folder / "vgg.pth")
    return LpipsFiles(folder / "vgg16.pth", folder / "vgg.pth", model)


def save_tiny_i3d(path: str | os.PathLike, seed: int = 2) -> Path:
    """A TorchScript stand-in for StyleGAN-V's ``i3d_torchscript.pt``: the same call,
    ``(B, 3, T, 224, 224)`` in [-1, 1] -> ``(B, 12)`` features."""
    import torch
    from torch import nn

    class TinyI3D(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(3, 6, kernel_size=(4, 16, 16), stride=(2, 16, 16))
            self.head = nn.Linear(12, 12)

        def forward(self, x, rescale: bool = False, resize: bool = False, return_features: bool = False):
            h = self.conv(x)  # (B, 6, T', 14, 14)
            feats = self.head(torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1))
            return feats if return_features else feats.softmax(dim=1)

    torch.manual_seed(seed)
    torch.jit.script(TinyI3D().eval()).save(str(path))
    return Path(path)
