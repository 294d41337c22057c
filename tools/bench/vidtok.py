"""VidTok benchmark: encode and decode throughput (frames/s) and peak memory of our
``VidTokAutoencoder``, next to microsoft/VidTok's own modules when they are importable.

For each ``--configs`` option of ``conf/video_tokenizer/`` (``vidtok_tiny`` by default; any
released one, e.g. ``vidtok_kl_causal_488_4chn``, at ``--size`` instead of its 256² when the
machine is small) it builds the model with random weights and times, best of ``--repeats``
after a warm-up, under ``no_grad`` in eval mode:

- encode: encoder + bottleneck (KL posterior mode, FSQ codes and indices) of a batch of
  ``frames_per_clip``-frame clips;
- decode: the decoder on those latents.

Frames/s counts input (encode) or output (decode) frames of the whole batch. Peak memory
is CUDA's ``max_memory_allocated`` above the weights (on a CPU: not measured).

With ``--upstream PATH`` (a checkout of microsoft/VidTok, e.g. the scratch one of
``tools/vidtok_fixtures.py``'s docstring, plus ``beartype`` on ``sys.path``) the same
measurements run on VidTok's ``Encoder*/Decoder*`` and regularizer, interleaved with ours,
with our weights loaded into them strictly and the same input; the largest difference of
the outputs and the ratio ours/VidTok are printed. Absolute CPU numbers mean little; read
the ratio. On a loaded machine pass ``--threads 1``.

    python tools/bench/vidtok.py --threads 1                                   # tiny, ours only
    PYTHONPATH=/work/scratch/vt_pkgs python tools/bench/vidtok.py --upstream /work/scratch/vidtok_src \\
        --configs vidtok_tiny vidtok_kl_causal_488_4chn --size 64 --threads 1
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

from divot_llm.config import compose_config
from divot_llm.tokenizers.vidtok import VidTokAutoencoder, VidTokConfig

TOOLS = Path(__file__).resolve().parents[1]


def _fixtures_tool() -> types.ModuleType:
    """``tools/vidtok_fixtures.py``: how VidTok's modules are imported without Lightning."""
    spec = importlib.util.spec_from_file_location("tool_vidtok_fixtures", TOOLS / "vidtok_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def import_upstream(path: Path | None) -> tuple | None:
    """VidTok's (model_3dcausal, model_3dnoncausal, regularizers), or None with the reason."""
    if path is None:
        return None
    # this script's folder (sys.path[0] when run as a script) holds a ``vidtok`` module, which
    # would shadow VidTok's namespace package
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [str(path)] + [entry for entry in sys.path if str(Path(entry or ".").resolve()) != here]
    if importlib.util.find_spec("vidtok") is None or importlib.util.find_spec("beartype") is None:
        print(f"VidTok: not importable from {path} (needs beartype too); timing ours only", file=sys.stderr)
        return None
    return _fixtures_tool()._upstream()


def upstream_model(
    modules: tuple, config: VidTokConfig, ours: VidTokAutoencoder
) -> dict[str, torch.nn.Module]:
    """VidTok's encoder, decoder and regularizer for ``config``, holding ``ours``'s weights."""
    causal_mod, noncausal_mod, regularizers = modules
    params = {
        "double_z": config.regularizer == "kl",
        "z_channels": config.z_channels,
        "in_channels": 3,
        "out_ch": 3,
        "ch": config.ch,
        "ch_mult": list(config.ch_mult),
        "time_downsample_factor": config.time_downsample_factor,
        "num_res_blocks": config.num_res_blocks,
        "dropout": 0.0,
        "norm_type": config.norm_type,
    }
    for name in ("spatial_ds", "tempo_ds", "spatial_us", "tempo_us"):
        if getattr(config, name) is not None:
            params[name] = list(getattr(config, name))
    if config.causal:
        encoder = causal_mod.EncoderCausal3DPadding(**params)
        decoder = causal_mod.DecoderCausal3DPadding(**params)
    else:
        encoder, decoder = noncausal_mod.Encoder3D(**params), noncausal_mod.Decoder3D(**params)
    encoder.load_state_dict(ours.encoder.state_dict(), strict=True)
    decoder.load_state_dict(ours.decoder.state_dict(), strict=True)
    if config.regularizer == "kl":
        regularizer = regularizers.DiagonalGaussianRegularizer(sample=False)
    else:
        regularizer = regularizers.FSQRegularizer(levels=list(config.fsq_levels))
    return {"encoder": encoder, "decoder": decoder, "regularizer": regularizer}


def best_s(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def row(label: str, frames: int, ours_s: float, theirs_s: float | None, ours_mib, theirs_mib) -> None:
    text = f"  {label:<8} ours {frames / ours_s:9.1f} frames/s ({ours_s * 1e3:8.1f} ms)"
    if ours_mib is not None:
        text += f", peak {ours_mib:8.1f} MiB"
    if theirs_s is not None:
        text += f" | VidTok {frames / theirs_s:9.1f} frames/s, ours/VidTok time {ours_s / theirs_s:.2f}"
        if theirs_mib is not None:
            text += f", peak {theirs_mib:8.1f} MiB"
    print(text)


def bench_config(name: str, args: argparse.Namespace, upstream: tuple | None, device: torch.device) -> None:
    overrides = [f"video_tokenizer={name}", "video_tokenizer.pretrained_path=null"]
    if args.size:
        overrides += [f"video_tokenizer.input_height={args.size}", f"video_tokenizer.input_width={args.size}"]
    config = compose_config(overrides).video_tokenizer
    torch.manual_seed(0)
    ours = VidTokAutoencoder(config).eval()
    params = sum(p.numel() for p in ours.parameters())
    theirs = upstream_model(upstream, config, ours) if upstream else None
    ours.to(device)
    if theirs:
        for module in theirs.values():
            module.to(device).eval()
    frames = config.frames_per_clip
    video = torch.rand(args.batch, 3, frames, config.input_height, config.input_width, device=device) * 2 - 1
    print(
        f"config {name}: {args.batch} x {frames} x {config.input_height}x{config.input_width}, "
        f"{config.regularizer}, {'causal' if config.causal else 'non-causal'}, {params:,} parameters"
    )
    with torch.no_grad():
        z = ours.encode(video)[0]

        def ours_encode():
            return ours.encode(video)

        def ours_decode():
            return ours.decode(z)

        timings = {"encode": [ours_encode], "decode": [ours_decode]}
        if theirs:

            def theirs_encode():
                return theirs["regularizer"](theirs["encoder"](video))

            def theirs_decode():
                return theirs["decoder"](z)

            timings["encode"].append(theirs_encode)
            timings["decode"].append(theirs_decode)
            diff_z = (theirs_encode()[0] - z).abs().max().item()
            diff_x = (theirs_decode() - ours_decode()).abs().max().item()
            print(f"  outputs: max |ours - VidTok| latents {diff_z:.2e}, decoded {diff_x:.2e}")
        for label, fns in timings.items():
            out_frames = args.batch * frames
            seconds = [best_s(fn, args.repeats, args.warmup, device) for fn in fns]
            peaks = [peak_mib(fn, device) for fn in fns]
            row(
                label,
                out_frames,
                seconds[0],
                seconds[1] if theirs else None,
                peaks[0],
                peaks[1] if theirs else None,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["vidtok_tiny"], help="conf/video_tokenizer options")
    parser.add_argument("--size", type=int, default=None, help="frame side instead of the config's")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--upstream", type=Path, default=None, help="a microsoft/VidTok checkout to compare with"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    upstream = import_upstream(args.upstream)
    print(
        f"vidtok bench: torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, "
        f"VidTok: {'compared' if upstream else 'not run'}"
    )
    for name in args.configs:
        bench_config(name, args, upstream, device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
