"""Write the video-diffusion-pytorch parity fixtures (``tests/fixtures/vdm/``) from the seed package.

Our Unet3D + GaussianDiffusion must reproduce the seed package to 1e-5 without depending on
it: video-diffusion-pytorch 0.7.0 declares torchvision (no CPU wheel on PyPI) and imports it
at module level. This script runs once, in a scratch environment outside the repository, and
its outputs are committed; CI only reads them.

Scratch environment (nothing is installed into the project's venv)::

    python -m pip install --target /work/scratch/vdm_pkgs --no-deps \\
        video-diffusion-pytorch==0.7.0 einops-exts rotary-embedding-torch
    PYTHONPATH=/work/scratch/vdm_pkgs python tools/vdm_fixtures.py

``python`` is the project's venv (torch, einops, safetensors, tqdm, Pillow). torchvision is
not needed: the package imports only ``transforms`` and ``utils`` from it, for its gif
helpers and Trainer, never for the model; this script puts a stand-in module under that
name into ``sys.modules`` for its own process only.

Writes, into ``--out`` (default ``tests/fixtures/vdm``):

- ``tiny.json``: the exact Unet3D and GaussianDiffusion kwargs, seeds, package versions,
  the call that made each tensor, and the README configuration's state-dict key/shape
  table (``readme_keys``) so that table can be checked on the meta device without the
  package;
- ``tiny_checkpoint.pt``: the seed Trainer's checkpoint format ``{'step', 'model', 'ema',
  'scaler'}``; ``ema`` is the model with every trainable parameter moved by 0.01 * randn;
- ``tiny_io.safetensors``: inputs, noise and the package's outputs (computed with the
  ``model`` weights, fp32, CPU, eval mode).
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import sys
import types
from pathlib import Path

import torch

PACKAGE = "video-diffusion-pytorch"
PACKAGE_VERSION = "0.7.0"
REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_UNET = {
    "dim": 16,
    "dim_mults": [1, 2],
    "channels": 3,
    "cond_dim": 8,
    "attn_heads": 2,
    "attn_dim_head": 8,
    "use_sparse_linear_attn": True,
}
TINY_DIFFUSION = {"image_size": 16, "num_frames": 4, "channels": 3, "timesteps": 8, "loss_type": "l1"}
# The seed README's first example (unconditional).
README_UNET = {"dim": 64, "dim_mults": [1, 2, 4, 8]}
README_DIFFUSION = {"image_size": 32, "num_frames": 5, "timesteps": 1000, "loss_type": "l1"}

BATCH = 2
CHECKPOINT_STEP = 7
EMA_SHIFT = 0.01
# Timesteps of the single-step fixtures: t = 0 (posterior variance 0, its log clamped) and
# t = 5 (x0 clipping active). Not t = 7: there sqrt(1 / alphas_cumprod) is 517, so
# float32 rounding in the noise prediction (1e-6) moves the step's mean by ~5e-5 -- the
# package itself moves that much between thread counts -- and a 1e-5 check cannot hold.
STEP_T = [5, 0]

CALLS = {
    "video": "torch.rand((2, 3, 4, 16, 16), generator=g)  # g = torch.Generator().manual_seed(input_seed), drawn in this order",
    "cond": "torch.randn((2, 8), generator=g)",
    "noise": "torch.randn((2, 3, 4, 16, 16), generator=g)",
    "t": f"torch.tensor({STEP_T}, dtype=torch.int64)",
    "x_noisy": "diffusion.q_sample(x_start=video * 2 - 1, t=t, noise=noise)",
    "denoised": "diffusion.denoise_fn(x_noisy, t, cond=cond)",
    "denoised_focus_mixed": "diffusion.denoise_fn(x_noisy, t, cond=cond, focus_present_mask=torch.tensor([True, False]))",
    "loss": "diffusion.p_losses(video * 2 - 1, t, cond=cond, noise=noise)",
    "loss_focus": "diffusion.p_losses(video * 2 - 1, t, cond=cond, noise=noise, focus_present_mask=torch.ones(2, dtype=torch.bool))",
    "loss_forward": "torch.manual_seed(sample_seed); diffusion(video, cond=cond)  # forward draws t = torch.randint(0, 8, (2,)) then noise = torch.randn_like(x)",
    "step_mean, _, step_log_var": "diffusion.p_mean_variance(x=x_noisy, t=t, clip_denoised=True, cond=cond, cond_scale=1.0)",
    "step_mean_cfg": "diffusion.p_mean_variance(x=x_noisy, t=t, clip_denoised=True, cond=cond, cond_scale=2.0)[0]",
    "sample": "torch.manual_seed(sample_seed); diffusion.sample(cond=cond, cond_scale=2.0, batch_size=2)",
    "sample_scale1": "torch.manual_seed(sample_seed); diffusion.sample(cond=cond, cond_scale=1.0, batch_size=2)",
}

# Max abs difference a parity test can ask for. Sampling passes the t = 7 step, where the
# noise prediction is scaled by sqrt(1 / alphas_cumprod[7]) = 517 before x0 is clipped: the
# package's own sample moves ~2e-5 between thread counts and between float32 and float64.
TOLERANCE = {"default": 1e-5, "sample": 1e-4, "sample_scale1": 1e-4}

NOTES = [
    "diffusion.eval() and torch.no_grad() for every tensor; weights are the checkpoint's 'model'.",
    "p_losses(x_start, t, cond=None, noise=None, **kwargs) hands **kwargs to denoise_fn, so "
    "focus_present_mask reaches Unet3D.forward there. With the mask all True, upstream's "
    "Attention returns to_out(v) directly (no softmax); denoised_focus_mixed exercises the "
    "masked softmax path (sample 0 attends only to its own frame). The first temporal "
    "attention (init_temporal_attn) never gets the mask.",
    "null_cond_prob and prob_focus_present are Unet3D.forward kwargs (default 0.), not "
    "GaussianDiffusion constructor kwargs; with probability 0 or 1 prob_mask_like draws no "
    "random numbers, so denoising and sampling consume the global RNG only for noise.",
    "sample RNG order after torch.manual_seed(sample_seed): x_T = torch.randn((2, 3, 4, 16, 16)), "
    "then for t = 7..0 one torch.randn_like(x) per p_sample (drawn at t = 0 too, masked out). "
    "p_sample always clips x0 to [-1, 1]; sample returns (x + 1) * 0.5. batch_size is "
    "ignored when cond is given (taken from cond.shape[0]).",
    "cond_scale != 1 runs forward_with_cond_scale: forward(null_cond_prob=0.) and "
    "forward(null_cond_prob=1.), null + (cond - null) * cond_scale.",
    "step_log_var is posterior_log_variance_clipped gathered at t, shape (2, 1, 1, 1, 1).",
    "ema: a deepcopy of the diffusion module with p.add_(0.01 * torch.randn(p.shape, "
    "generator=torch.Generator().manual_seed(ema_seed))) for every parameter with "
    "requires_grad, in named_parameters() order. The rotary freqs (an nn.Parameter with "
    "requires_grad=False, shared by all temporal attentions and stored once per attention in "
    "the state dict) and the schedule buffers stay equal to model's, as in a real Trainer EMA.",
    "GaussianDiffusion.interpolate calls p_sample without cond, so it fails on a conditional "
    "Unet3D (the assert 'cond must be passed in'); no interpolate fixture for this config.",
    "Unet3D kwargs not listed take the package defaults: out_dim=None (channels), "
    "init_dim=None (dim), init_kernel_size=7, use_bert_text_cond=False, block_type='resnet' "
    "(unused); GaussianDiffusion: text_use_bert_cls=False, use_dynamic_thres=False, "
    "dynamic_thres_percentile=0.9. SpatialLinearAttention and the middle spatial Attention "
    "use heads=attn_heads but their default dim_head=32, not attn_dim_head.",
]


def stand_in_torchvision() -> None:
    """Names the package's module-level torchvision imports need (``transforms.ToTensor()``
    is evaluated as a default argument at import); nothing the model calls."""

    class _Unavailable:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, *args, **kwargs):
            raise NotImplementedError("torchvision stand-in: only the model is usable here")

    vision = types.ModuleType("torchvision")
    vision.__path__ = []
    transforms = types.ModuleType("torchvision.transforms")
    for name in (
        "ToTensor",
        "ToPILImage",
        "Compose",
        "Resize",
        "RandomHorizontalFlip",
        "Lambda",
        "CenterCrop",
    ):
        setattr(transforms, name, _Unavailable)
    utils = types.ModuleType("torchvision.utils")
    vision.transforms, vision.utils = transforms, utils
    sys.modules.update(
        {"torchvision": vision, "torchvision.transforms": transforms, "torchvision.utils": utils}
    )


def import_upstream() -> types.ModuleType:
    """The seed package's module, or exit with how to make the scratch environment."""
    stand_in_torchvision()
    try:
        version = importlib.metadata.version(PACKAGE)
        from video_diffusion_pytorch import video_diffusion_pytorch as vdm
    except (ImportError, importlib.metadata.PackageNotFoundError) as exc:
        sys.exit(
            f"vdm_fixtures: cannot import {PACKAGE} ({exc}).\n"
            "Make the scratch environment and put it on PYTHONPATH (see this script's docstring):\n"
            "  python -m pip install --target /work/scratch/vdm_pkgs --no-deps "
            f"{PACKAGE}=={PACKAGE_VERSION} einops-exts rotary-embedding-torch\n"
            "  PYTHONPATH=/work/scratch/vdm_pkgs python tools/vdm_fixtures.py"
        )
    if version != PACKAGE_VERSION:
        sys.exit(f"vdm_fixtures: the fixtures are for {PACKAGE} {PACKAGE_VERSION}, found {version}")
    return vdm


def build(vdm: types.ModuleType, unet: dict, diffusion: dict) -> torch.nn.Module:
    model = vdm.Unet3D(**{k: tuple(v) if isinstance(v, list) else v for k, v in unet.items()})
    return vdm.GaussianDiffusion(model, **diffusion)


def perturbed_copy(diffusion: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A stand-in EMA that differs from the model in every trainable tensor."""
    ema = copy.deepcopy(diffusion)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in ema.named_parameters():
            if param.requires_grad:
                param.add_(EMA_SHIFT * torch.randn(param.shape, generator=gen))
    return ema


@torch.no_grad()
def io_tensors(diffusion: torch.nn.Module, input_seed: int, sample_seed: int) -> dict[str, torch.Tensor]:
    cfg = TINY_DIFFUSION
    shape_bcfhw = (BATCH, cfg["channels"], cfg["num_frames"], cfg["image_size"], cfg["image_size"])
    gen = torch.Generator().manual_seed(input_seed)
    video = torch.rand(shape_bcfhw, generator=gen)  # (B, C, F, H, W) in [0, 1]
    cond_bd = torch.randn((BATCH, TINY_UNET["cond_dim"]), generator=gen)
    noise = torch.randn(shape_bcfhw, generator=gen)
    t = torch.tensor(STEP_T, dtype=torch.int64)
    x_start = video * 2 - 1

    out = {"video": video, "cond": cond_bd, "noise": noise, "t": t}
    out["x_noisy"] = diffusion.q_sample(x_start=x_start, t=t, noise=noise)
    out["denoised"] = diffusion.denoise_fn(out["x_noisy"], t, cond=cond_bd)
    mixed = torch.tensor([True, False])
    out["denoised_focus_mixed"] = diffusion.denoise_fn(
        out["x_noisy"], t, cond=cond_bd, focus_present_mask=mixed
    )
    out["loss"] = diffusion.p_losses(x_start, t, cond=cond_bd, noise=noise)
    all_present = torch.ones(BATCH, dtype=torch.bool)
    out["loss_focus"] = diffusion.p_losses(
        x_start, t, cond=cond_bd, noise=noise, focus_present_mask=all_present
    )
    torch.manual_seed(sample_seed)
    out["loss_forward"] = diffusion(video, cond=cond_bd)
    mean, _, log_var = diffusion.p_mean_variance(
        x=out["x_noisy"], t=t, clip_denoised=True, cond=cond_bd, cond_scale=1.0
    )
    out["step_mean"], out["step_log_var"] = mean, log_var
    out["step_mean_cfg"] = diffusion.p_mean_variance(
        x=out["x_noisy"], t=t, clip_denoised=True, cond=cond_bd, cond_scale=2.0
    )[0]
    for name, scale in (("sample", 2.0), ("sample_scale1", 1.0)):
        torch.manual_seed(sample_seed)
        out[name] = diffusion.sample(cond=cond_bd, cond_scale=scale, batch_size=BATCH)
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def thread_spread(diffusion: torch.nn.Module, tensors: dict[str, torch.Tensor], args) -> dict[str, float]:
    """How far the package's own outputs move when recomputed on one thread: the float32
    rounding floor any reimplementation's parity check has to sit above."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = io_tensors(diffusion, args.input_seed, args.sample_seed)
    finally:
        torch.set_num_threads(threads)
    return {k: (again[k].double() - v.double()).abs().max().item() for k, v in tensors.items()}


def readme_table(vdm: types.ModuleType) -> tuple[dict[str, list[int]], int]:
    """State-dict key -> shape of the README's configuration, and its parameter count."""
    with torch.device("meta"):
        diffusion = build(vdm, README_UNET, README_DIFFUSION)
    keys = {k: list(v.shape) for k, v in diffusion.state_dict().items()}
    return keys, sum(p.numel() for p in diffusion.parameters())


def versions() -> dict[str, str]:
    names = (PACKAGE, "rotary-embedding-torch", "einops-exts", "einops")
    return {name: importlib.metadata.version(name) for name in names} | {"torch": torch.__version__}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "vdm")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building the model")
    parser.add_argument("--input-seed", type=int, default=1)
    parser.add_argument("--ema-seed", type=int, default=2)
    parser.add_argument("--sample-seed", type=int, default=3)
    args = parser.parse_args(argv)

    vdm = import_upstream()
    from safetensors.torch import save_file

    torch.set_default_dtype(torch.float32)
    torch.manual_seed(args.seed)
    diffusion = build(vdm, TINY_UNET, TINY_DIFFUSION).eval()
    ema = perturbed_copy(diffusion, args.ema_seed).eval()
    tensors = io_tensors(diffusion, args.input_seed, args.sample_seed)
    spread = thread_spread(diffusion, tensors, args)
    readme_keys, readme_params = readme_table(vdm)

    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "step": CHECKPOINT_STEP,
        "model": diffusion.state_dict(),
        "ema": ema.state_dict(),
        "scaler": {},
    }
    torch.save(checkpoint, args.out / "tiny_checkpoint.pt")
    save_file(tensors, str(args.out / "tiny_io.safetensors"))
    meta = {
        "unet": TINY_UNET,
        "diffusion": TINY_DIFFUSION,
        "seed": args.seed,
        "input_seed": args.input_seed,
        "ema_seed": args.ema_seed,
        "sample_seed": args.sample_seed,
        "batch": BATCH,
        "checkpoint_step": CHECKPOINT_STEP,
        "torch": torch.__version__,
        "package": f"{PACKAGE} {PACKAGE_VERSION}",
        "versions": versions(),
        "tiny_params": sum(p.numel() for p in diffusion.parameters()),
        "tiny_state_dict_entries": len(checkpoint["model"]),
        "tensors": CALLS,
        "tolerance": TOLERANCE,
        "spread_one_thread": spread,
        "notes": NOTES,
        "readme_config": {"unet": README_UNET, "diffusion": README_DIFFUSION},
        "readme_params": readme_params,
        "readme_state_dict_entries": len(readme_keys),
        "readme_keys": readme_keys,
    }
    (args.out / "tiny.json").write_text(json.dumps(meta, indent=1) + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(args.out.iterdir()) if p.is_file()}
    print(json.dumps({"out": str(args.out), "bytes": sizes, "tiny_params": meta["tiny_params"]}, indent=1))


if __name__ == "__main__":
    main()
