"""Make a CUDA-only torchvision wheel importable on CPU-only torch.

PyPI's only linux torchvision wheel is a CUDA build. On CPU torch its ``_C`` extension
fails to load, and torchvision 0.28's import then dies registering fake kernels for the
two ops it does not guard (``nms``/``qnms``) -- which also breaks transformers, diffusers
and open_clip, since they import torchvision opportunistically. Defining those two op
schemas first is enough for everything this project uses (transforms, models).

A no-op when torchvision is absent or its extension loads (GPU machines).
"""

from __future__ import annotations

import glob
import importlib.util
import os

_LIBRARY = None  # keeps the torch.library.Library alive


def apply() -> bool:
    """Return True when the shim had to define the ops."""
    global _LIBRARY
    if _LIBRARY is not None:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return False
    import torch

    for lib in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
        try:
            torch.ops.load_library(lib)
            return False  # the real ops are available
        except (OSError, ImportError, RuntimeError):
            break
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    return True
