"""Video-diffusion benchmark: our Unet3D + GaussianDiffusion next to video-diffusion-pytorch.

For each configuration -- ``tiny`` (the parity fixtures' kwargs, ``tools/vdm_fixtures.py``)
and ``readme`` (the seed README's: ``dim=64``, ``dim_mults=(1, 2, 4, 8)``, 5 frames of 32²,
1000 cosine steps) -- it times, best of ``--repeats`` after a warm-up:

- a training step: ``diffusion(video, cond=...)`` forward, backward and ``torch.optim.Adam``;
- one ancestral step (``p_sample``), timed over a prefix of ``--ancestral-steps`` steps from
  ``T - 1`` down and extrapolated to all ``T`` steps (said so in the output when the prefix is
  shorter than ``T``: 1000 steps of the README model take minutes on a CPU);
- DDIM sampling in ``--ddim-steps`` steps (ours only: the seed has no DDIM), the whole loop.

When the seed package is importable (``--seed-path``, e.g. the scratch install of
``tools/vdm_fixtures.py``'s docstring, is put first on ``sys.path``; a torchvision stand-in
covers its module-level imports) the same measurements run on it, interleaved with ours,
with the same kwargs, the same weights (ours loaded into it strictly), the same inputs and
RNG state -- the first training loss must agree, which the output shows -- and the ratio
ours/seed is printed. Absolute CPU numbers mean little; the ratio is the number to read. On a
loaded machine pass ``--threads 1``: there, two intra-op threads wait on each other and one
UNet call swings between 2 and 6 s where one thread takes 0.6 s steadily.

    python tools/bench/vdm.py --seed-path /work/scratch/vdm_pkgs --threads 1 --ancestral-steps 3
    python tools/bench/vdm.py --quick --configs tiny                        # seconds; CI's smoke run
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import math
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from divot_llm.detokenizers.vdm import GaussianDiffusion, build_vdm
from divot_llm.detokenizers.vdm_ddim import sample_ddim  # imports diffusers before the stand-in

TOOLS = Path(__file__).resolve().parents[1]


def _fixtures_tool() -> types.ModuleType:
    """``tools/vdm_fixtures.py``: the configurations and the torchvision stand-in, one copy."""
    spec = importlib.util.spec_from_file_location("tool_vdm_fixtures", TOOLS / "vdm_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


FIXTURES = _fixtures_tool()
CONFIGS = {
    "tiny": (FIXTURES.TINY_UNET, FIXTURES.TINY_DIFFUSION),
    "readme": (FIXTURES.README_UNET, FIXTURES.README_DIFFUSION),
}


def import_seed(seed_path: str | None) -> types.ModuleType | None:
    """The seed's ``video_diffusion_pytorch`` module, or None (with the reason on stderr)."""
    if seed_path:
        sys.path.insert(0, seed_path)
    if importlib.util.find_spec("video_diffusion_pytorch") is None:
        print("seed package: not importable (pass --seed-path); timing ours only", file=sys.stderr)
        return None
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        FIXTURES.stand_in_torchvision()
    from video_diffusion_pytorch import video_diffusion_pytorch as seed

    return seed


def best_s(fn: Callable[[], object], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class Subject:
    """One implementation's model, optimizer and the closures the bench times."""

    def __init__(self, diffusion: torch.nn.Module, video: torch.Tensor, cond: torch.Tensor | None) -> None:
        self.diffusion, self.video, self.cond = diffusion, video, cond
        self.optimizer = torch.optim.Adam(diffusion.parameters(), lr=1e-4)
        self.cond_scale = 2.0 if cond is not None else 1.0  # guidance doubles the UNet calls

    def train_step(self) -> float:
        torch.manual_seed(0)  # the same t and noise for both implementations
        self.diffusion.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.diffusion(self.video, cond=self.cond)
        loss.backward()
        self.optimizer.step()
        return loss.item()

    def ancestral(self, x_t: torch.Tensor, steps: int) -> torch.Tensor:
        self.diffusion.eval()
        torch.manual_seed(1)
        batch, total = x_t.shape[0], self.diffusion.num_timesteps
        x = x_t
        for step in range(total - 1, total - 1 - steps, -1):
            t_b = torch.full((batch,), step, dtype=torch.long)
            x = self.diffusion.p_sample(x, t_b, cond=self.cond, cond_scale=self.cond_scale)
        return x

    def ddim(self, steps: int) -> torch.Tensor:
        self.diffusion.eval()
        gen = torch.Generator().manual_seed(1)
        return sample_ddim(
            self.diffusion, self.cond, self.cond_scale, self.video.shape[0], steps=steps, generator=gen
        )


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:10.1f} ms"


def row(label: str, ours_s: float, seed_s: float | None) -> None:
    line = f"  {label:<56} ours {fmt_ms(ours_s)}"
    if seed_s is not None:
        line += f"   seed {fmt_ms(seed_s)}   ours/seed {ours_s / seed_s:.2f}"
    print(line, flush=True)


def bench_config(name: str, args: argparse.Namespace, seed: types.ModuleType | None) -> None:
    unet_kwargs, diffusion_kwargs = CONFIGS[name]
    torch.manual_seed(0)
    ours: GaussianDiffusion = build_vdm(unet_kwargs, diffusion_kwargs)
    frames, size = diffusion_kwargs["num_frames"], diffusion_kwargs["image_size"]
    channels, total = ours.channels, ours.num_timesteps
    gen = torch.Generator().manual_seed(2)
    video_bcfhw = torch.rand((args.batch, channels, frames, size, size), generator=gen)
    cond_dim = unet_kwargs.get("cond_dim")
    cond_bd = torch.randn((args.batch, cond_dim), generator=gen) if cond_dim else None
    x_t = torch.randn(video_bcfhw.shape, generator=gen)
    params = sum(p.numel() for p in ours.parameters())
    print(
        f"config {name}: Unet3D {dict(unet_kwargs)}, {frames} frames of {size}x{size}, "
        f"{total} timesteps, batch {args.batch}, {params:,} parameters"
        + (", conditional (cond_scale 2)" if cond_bd is not None else ", unconditional"),
        flush=True,
    )
    subjects = {"ours": Subject(ours, video_bcfhw, cond_bd)}
    if seed is not None:
        seed_unet = seed.Unet3D(**{k: tuple(v) if isinstance(v, list) else v for k, v in unet_kwargs.items()})
        seed_diffusion = seed.GaussianDiffusion(seed_unet, **diffusion_kwargs)
        seed_diffusion.load_state_dict(ours.state_dict(), strict=True)
        subjects["seed"] = Subject(seed_diffusion, video_bcfhw, cond_bd)
        losses = {who: s.train_step() for who, s in subjects.items()}  # one step each, same start
        print(
            f"  like-for-like check: first training loss ours {losses['ours']:.6f} "
            f"seed {losses['seed']:.6f} (same weights, inputs, t and noise)",
            flush=True,
        )

    def timed(fn_of: Callable[[Subject], Callable[[], object]], only: str | None = None) -> dict[str, float]:
        # interleaved: each repeat times ours then the seed, so load on the machine hits both
        chosen = {who: s for who, s in subjects.items() if only in (None, who)}
        results = dict.fromkeys(chosen, math.inf)
        for _ in range(args.warmup):
            for subject in chosen.values():
                fn_of(subject)()
        for _ in range(args.repeats):
            for who, subject in chosen.items():
                results[who] = min(results[who], best_s(fn_of(subject), 1, 0))
        return results

    train = timed(lambda s: s.train_step)
    row("train step (forward + backward + Adam)", train["ours"], train.get("seed"))

    prefix = min(args.ancestral_steps or total, total)
    anc = timed(lambda s: lambda: s.ancestral(x_t, prefix))
    per_step = {who: t / prefix for who, t in anc.items()}
    row(f"ancestral step (best of {prefix}-step loops)", per_step["ours"], per_step.get("seed"))
    how = "measured" if prefix == total else f"extrapolated from {prefix} timed steps"
    full = {who: t * total for who, t in per_step.items()}
    row(f"ancestral {total} steps ({how})", full["ours"], full.get("seed"))

    ddim_steps = min(args.ddim_steps, total)
    ddim_s = timed(lambda s: lambda: s.ddim(ddim_steps), only="ours")["ours"]
    row(f"DDIM step (best of {ddim_steps}-step loops, ours)", ddim_s / ddim_steps, None)
    row(f"DDIM {ddim_steps} steps (ours; the seed has none)", ddim_s, None)
    baseline = full.get("seed", full["ours"])
    who = "the seed's" if "seed" in full else "our"
    print(
        f"  DDIM {ddim_steps} steps vs {who} ancestral {total} steps: {baseline / ddim_s:.1f}x faster",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["tiny", "readme"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--ancestral-steps",
        type=int,
        default=None,
        help="time this many ancestral steps and extrapolate to all (default: all)",
    )
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument(
        "--seed-path", default=None, help="put this folder first on sys.path for the seed package"
    )
    parser.add_argument("--no-seed", action="store_true", help="time ours only")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads; 1 on a loaded machine, where 2+ threads stall on each other",
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 repeat, no warm-up, 2 ancestral steps, 4 DDIM steps"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup, args.ancestral_steps, args.ddim_steps = 1, 0, 2, 4
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads_before)  # main() also runs in-process (the tests)


def run(args: argparse.Namespace) -> int:
    seed = None if args.no_seed else import_seed(args.seed_path)
    seed_name = f"{FIXTURES.PACKAGE} {importlib.metadata.version(FIXTURES.PACKAGE)}" if seed else "not run"
    print(
        f"vdm bench: CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, best of {args.repeats}; "
        f"seed: {seed_name}",
        flush=True,
    )
    for name in args.configs:
        bench_config(name, args, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
