"""Write the Video-LaVIT motion tokenizer fixtures (``tests/fixtures/lavit/``) from LaVIT's own code.

Our ``divot_llm.tokenizers.motion.lavit`` must load the released ``motion_tokenizer.bin``
strictly and compute what LaVIT computes, without depending on LaVIT (not a package; its
``models/__init__`` imports the whole generation stack). This script runs once, outside the
project: it exports LaVIT's three model files (``VideoLaVIT/models/modeling_motion_tokenizer.py``
and the ``modeling_visual_tokenzier.py`` / ``modeling_visual_encoder.py`` it imports) from a
git checkout into a scratch folder, installs what they import there when missing (timm 0.4.12,
LaVIT's pin, and einops, with ``pip --target``), imports them, and writes the fixtures; CI
only reads those.

    python tools/lavit_fixtures.py --lavit /path/to/LaVIT   # a clone (or bare git dir) of jy0205/LaVIT

``python`` is the project's venv (torch, safetensors). torchvision is not installed: timm's
data package and LaVIT's motion tokenizer file import it for image transforms that no model
class uses, so this process puts stand-in ``torchvision`` modules into ``sys.modules``.
Nothing of LaVIT is edited or monkeypatched: the tiny model below is built through its own
constructors (LaVIT hard-codes 4 stages of 3 blocks and the strides, which it keeps).

Writes, into ``--out`` (default ``tests/fixtures/lavit``):

- ``motion_key_table.json.gz``: the released configuration (``build_motion_tokenizer`` with
  its defaults, built on the meta device): state-dict key -> shape, and the commit;
- ``tiny_motion.safetensors``: a tiny model (``TINY``; LaVIT's structure at width 8,
  8 x 8 x 12 fields -> 1 x 2 x 3 codes of 16) -- its weights under LaVIT's key names
  (LaVIT's initialisation with seed 0, then every tensor redrawn from seed 1 so that biases
  and norms are not the constants it initialises them to, and the codebook rows' lengths
  spread over [0.6, 1.4]: LaVIT uses them as stored, and the script checks that re-normalised
  rows would pick other codes), and under ``fixture.*``: the input
  fields (seed 2), the unit latents, LaVIT's codes (``get_codebook_indices``), its decoded
  reconstruction (``decode(encode(x))``) and its de-tokenizer condition
  (``reconstruct(x, *CONDITION_HW)``). The metadata holds ``TINY`` and the commit.
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FILES = ["modeling_motion_tokenizer.py", "modeling_visual_tokenzier.py", "modeling_visual_encoder.py"]
SCRATCH_PACKAGES = ["timm==0.4.12", "einops"]
# The tiny model in our config's field names (LaVITMotionConfig); the strides are LaVIT's.
TINY = {
    "frames": 8,
    "height": 8,
    "width": 12,
    "embed_dim": 8,
    "num_heads": 2,
    "mlp_ratio": 1.0,
    "blocks_per_stage": 3,
    "code_dim": 4,
    "codebook_size": 16,
}
BATCH = 2
CONDITION_HW = (6, 10)
FIELD_STD = 3.0  # rescaled motion (data.motion.rescale) spans a few units
MIN_CODE_MARGIN = 1e-4  # second-nearest minus nearest distance: codes robust to rounding


def export_lavit(
    lavit: Path, commit: str, scratch: Path, names: list[str] = MODEL_FILES, extra: tuple[str, ...] = ()
) -> str:
    """Write LaVIT's model files ``names`` at ``commit`` into ``scratch/models/`` (with an
    empty ``__init__``), and ``extra`` (paths under ``VideoLaVIT/``) to the same paths under
    ``scratch``; returns the full commit hash."""
    git = ["git", "-C", str(lavit)]
    full = subprocess.run(
        [*git, "rev-parse", commit], check=True, capture_output=True, text=True
    ).stdout.strip()
    models = scratch / "models"
    models.mkdir(parents=True, exist_ok=True)
    (models / "__init__.py").write_text("")
    for name in [f"models/{name}" for name in names] + list(extra):
        source = subprocess.run(
            [*git, "show", f"{full}:VideoLaVIT/{name}"], check=True, capture_output=True, text=True
        ).stdout
        (scratch / name).write_text(source)
    return full


def prepare_imports(scratch: Path) -> None:
    """Put the scratch folder (LaVIT's ``models``) and its packages on ``sys.path``,
    installing timm and einops there first when missing, and stand-in torchvision modules."""
    packages = scratch / "packages"
    sys.path[:0] = [str(scratch), str(packages)]
    _stub_torchvision()
    try:
        importlib.import_module("timm.models.layers")
        importlib.import_module("einops")
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(packages)]
            + SCRATCH_PACKAGES,
            check=True,
        )
        importlib.invalidate_caches()


class _StubModule(types.ModuleType):
    """A module whose every attribute is an empty class (torchvision transforms, unused)."""

    __path__: list[str] = []

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *args, **kwargs: None})


def _stub_torchvision() -> None:
    names = [
        "torchvision",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.datasets",
    ]
    for name in names:
        sys.modules.setdefault(name, _StubModule(name))
    for name in names[1:]:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[name])


def key_table(lavit_module) -> dict[str, list[int]]:
    """The released configuration's state-dict key -> shape, built on the meta device."""
    with torch.device("meta"):
        model = lavit_module.build_motion_tokenizer(as_tokenizer=False)
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def tiny_model(lavit_module):
    """LaVIT's tokenizer at ``TINY`` through its own constructors, weights redrawn."""
    params = lavit_module.get_motion_trans_model_params()
    params.update(
        dim=TINY["embed_dim"],
        num_heads=TINY["num_heads"],
        mlp_ratio=TINY["mlp_ratio"],
        img_size=(TINY["width"], TINY["height"]),
        num_frames=TINY["frames"],
    )
    decoder_params = dict(params, in_channel=TINY["code_dim"])
    torch.manual_seed(0)
    model = lavit_module.MotionTransformerTokenizer(
        params, decoder_params, 2, n_embed=TINY["codebook_size"], embed_dim=TINY["code_dim"]
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, tensor in sorted(model.state_dict().items()):
            noise = torch.randn(tensor.shape, generator=generator)
            if key == "quantize.embedding.weight":
                lengths = 0.6 + 0.8 * torch.rand(tensor.shape[0], 1, generator=generator)
                tensor.copy_(F.normalize(noise, dim=-1) * lengths)
            elif key.endswith(("norm0.weight", "norm1.weight", "norm2.weight", "norm.weight")):
                tensor.copy_(1.0 + 0.2 * noise)
            elif tensor.ndim == 1:  # biases
                tensor.copy_(0.1 * noise)
            elif "pos" in key:
                tensor.copy_(0.5 * noise)
            else:  # weights: variance 1 / fan_in
                tensor.copy_(noise / (tensor[0].numel() ** 0.5))
    return model.eval()


def tiny_outputs(model) -> dict[str, torch.Tensor]:
    """LaVIT's outputs for the fixture input (seeded), through its own methods."""
    generator = torch.Generator().manual_seed(2)
    shape = (BATCH, 2, TINY["frames"], TINY["height"], TINY["width"])
    fields = FIELD_STD * torch.randn(shape, generator=generator)
    with torch.no_grad():
        z = F.normalize(model.encode_task_layer(model.encoder(fields)), dim=-1)
        codes = model.get_codebook_indices(fields)
        quantize, _ = model.encode(fields)
        recon = model.decode(quantize)
        condition = model.reconstruct(fields, *CONDITION_HW)
        codebook = model.quantize.embedding.weight
        dist = (z.flatten(0, 3)[:, None, :] - codebook[None]).pow(2).sum(-1).sort(dim=1).values
        unit_rows = F.normalize(codebook, dim=-1)
        renormalised = (z.flatten(0, 3)[:, None, :] - unit_rows[None]).pow(2).sum(-1).argmin(dim=1)
    margin = float((dist[:, 1] - dist[:, 0]).min())
    if margin < MIN_CODE_MARGIN:
        raise SystemExit(f"a code is within {margin:.2e} of its runner-up: pick other seeds")
    if torch.equal(renormalised.view_as(codes), codes):
        raise SystemExit("re-normalised codebook rows give LaVIT's codes too: the fixture would not tell")
    return {
        "fixture.fields": fields,
        "fixture.z": z.flatten(1, 3).contiguous(),
        "fixture.codes": codes.contiguous(),
        "fixture.recon": recon.contiguous(),
        "fixture.condition": condition.contiguous(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lavit", type=Path, required=True, help="a clone or bare git dir of jy0205/LaVIT")
    parser.add_argument("--commit", default="HEAD")
    parser.add_argument(
        "--scratch", type=Path, default=Path("/tmp/lavit_fixtures"), help="outside the project"
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "lavit")
    args = parser.parse_args(argv)
    if args.scratch.resolve().is_relative_to(REPO_ROOT):
        raise SystemExit("--scratch must be outside the project: LaVIT's code never enters it")
    torch.set_num_threads(1)
    commit = export_lavit(args.lavit, args.commit, args.scratch)
    prepare_imports(args.scratch)
    lavit_module = importlib.import_module("models.modeling_motion_tokenizer")

    args.out.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out / "motion_key_table.json.gz", "wt") as file:
        json.dump({"commit": commit, "keys": key_table(lavit_module)}, file, indent=0, sort_keys=True)
    model = tiny_model(lavit_module)
    tensors = {key: value.contiguous() for key, value in model.state_dict().items()} | tiny_outputs(model)
    metadata = {"commit": commit, "tiny": json.dumps(TINY), "condition_hw": json.dumps(CONDITION_HW)}
    save_file(tensors, args.out / "tiny_motion.safetensors", metadata=metadata)
    print(f"wrote {args.out} from LaVIT {commit[:10]} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
