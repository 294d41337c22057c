"""``divot-eval``: evaluate a video tokenizer's reconstructions with VidTok's metrics.

    divot-eval reconstruction data/mcl_jcv --height 256 --width 256 --fps 30 --video-tokenizer vidtok_kl_causal_488_4chn --ckpt checkpoints/vidtok_kl_causal_488_4chn.ckpt --out eval/kl_causal_488_4chn
    divot-eval reconstruction data/val --meta data/val/meta.csv --height 256 --width 256 --fps 30 --video-tokenizer vidtok_fsq_causal_488_262144 --ckpt checkpoints/vidtok_fsq_causal_488_262144.ckpt --lpips weights/vgg16-397923af.pth --lpips-heads weights/vgg.pth --i3d weights/i3d_torchscript.pt --out eval/fsq

Every video under DATA_DIR (or those of the --meta CSV's ``videos`` column, relative to
DATA_DIR) is read at --fps, resized (shorter side) and centre-cropped to --height x
--width, reconstructed whole through the tokenizer (chunked, frame count kept) and scored
per frame: PSNR and SSIM always; LPIPS with --lpips (torchvision's vgg16 weights) and
--lpips-heads (taming-transformers' vgg.pth); FVD with --i3d (StyleGAN-V's
i3d_torchscript.pt) over non-overlapping --fvd-frames clips. These default to the
config's eval.lpips_path, eval.lpips_heads_path and eval.i3d_path. --out gets results.md
(the VidTok README's table columns, then one row per video), results.json and
per_video.png. --set KEY=VALUE changes the config (repeatable).

Exit codes: 0 every video scored; 1 the evaluation could not run; 2 a usage or config
error; 3 some videos could not be read (named on stderr; the others were scored).
"""

from __future__ import annotations

import argparse
import sys

from divot_llm.cli.display import EXIT_SKIPPED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="divot-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser(
        "reconstruction", help="PSNR/SSIM/LPIPS/FVD of a video tokenizer's reconstructions"
    )
    rec.add_argument("data_dir", metavar="DATA_DIR", help="folder of videos")
    rec.add_argument("--meta", metavar="CSV", help="CSV with a 'videos' column of paths relative to DATA_DIR")
    rec.add_argument("--video-tokenizer", required=True, metavar="NAME",
                     help="a conf/video_tokenizer option that decodes itself, e.g. vidtok_kl_causal_488_4chn, "
                          "or a saved one (divot-export vidtok: OUT/video_tokenizer)")  # fmt: skip
    add_reconstruction_args(rec, frames_required=True)
    rec.add_argument("--i3d", metavar="PATH", help="TorchScript I3D for FVD (default: eval.i3d_path)")
    rec.add_argument(
        "--fvd-frames", type=int, default=16, help="frames per FVD clip (default 16, at least 10)"
    )
    rec.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config change (repeatable)")  # fmt: skip
    rec.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    rec.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                     help="dtype the tokenizer runs in (default fp32, as VidTok evaluates)")  # fmt: skip
    rec.add_argument(
        "--out", required=True, metavar="DIR", help="folder for results.md, results.json, per_video.png"
    )
    return parser


# What divot-infer reconstruct --video-tokenizer reads when not told: VidTok's
# inference_reconstruct.py defaults.
READ_DEFAULTS = {"height": 256, "width": 256, "fps": 30.0}


def add_reconstruction_args(p: argparse.ArgumentParser, frames_required: bool) -> None:
    """How videos are read and which weights score them: shared with ``divot-infer
    reconstruct --video-tokenizer``, where the frame flags are optional (None: not given;
    ``READ_DEFAULTS`` apply)."""
    shown = "" if frames_required else " (default %s with --video-tokenizer)"
    p.add_argument("--height", type=int, required=frames_required,
                   help="frame height after resize and centre crop" + (shown and shown % READ_DEFAULTS["height"]))  # fmt: skip
    p.add_argument("--width", type=int, required=frames_required,
                   help="frame width after resize and centre crop" + (shown and shown % READ_DEFAULTS["width"]))  # fmt: skip
    p.add_argument("--fps", type=float, required=frames_required,
                   help="frames read per second of video" + (shown and shown % f"{READ_DEFAULTS['fps']:g}"))  # fmt: skip
    p.add_argument("--ckpt", metavar="PATH",
                   help="the video tokenizer's weights: a released .ckpt/.safetensors or a save_pretrained "
                        "folder (default: the option's pretrained_path)")  # fmt: skip
    p.add_argument(
        "--lpips", metavar="PATH", help="torchvision vgg16 state dict for LPIPS (default: eval.lpips_path)"
    )
    p.add_argument("--lpips-heads", metavar="PATH",
                   help="LPIPS VGG heads, taming-transformers vgg.pth (default: eval.lpips_heads_path)")  # fmt: skip


def eval_config(args: argparse.Namespace):
    """The composed config of ``--video-tokenizer`` with ``--ckpt`` and the weights flags
    set (every path it reads checked)."""
    from divot_llm.infer.evaluate import tokenizer_config

    return tokenizer_config(
        args.video_tokenizer, args.ckpt, args.overrides, lpips_path=args.lpips,
        lpips_heads_path=args.lpips_heads, i3d_path=getattr(args, "i3d", None),
    )  # fmt: skip


def device_and_dtype(args: argparse.Namespace):
    """``--device`` (default: CUDA if available) and ``--dtype`` (fp32 unless bf16)."""
    import torch

    from divot_llm.infer.load import default_device

    device = torch.device(args.device) if args.device else default_device()
    return device, torch.bfloat16 if args.dtype == "bf16" else torch.float32


def main(argv: list[str] | None = None) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from divot_llm.config import ConfigError
    from divot_llm.config.loading import describe_config_error

    args = build_parser().parse_args(argv)
    try:
        return _reconstruction(args)
    except (ConfigError, HydraException, OmegaConfBaseException) as exc:
        print(f"divot-eval: {describe_config_error(exc)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"divot-eval: {exc}", file=sys.stderr)
        return 1


def _reconstruction(args: argparse.Namespace) -> int:
    from pathlib import Path

    from divot_llm.cli.display import printable
    from divot_llm.infer.eval_report import write_report
    from divot_llm.infer.evaluate import (
        EvalSettings,
        evaluate_reconstruction,
        list_videos,
        load_eval_weights,
        load_reconstructing_tokenizer,
    )

    videos = list_videos(args.data_dir, args.meta)  # before the config: a bad listing fails at once
    cfg = eval_config(args)
    device, dtype = device_and_dtype(args)
    tokenizer = load_reconstructing_tokenizer(cfg, device, dtype)
    lpips, i3d = load_eval_weights(cfg, device)
    settings = EvalSettings(args.video_tokenizer, args.height, args.width, args.fps, args.fvd_frames)

    def progress(scores) -> None:
        lpips_text = f", LPIPS {scores.lpips:.4f}" if scores.lpips is not None else ""
        print(f"{printable(scores.video, 4096)}: {scores.frames} frames, PSNR {scores.psnr:.2f} dB, "
              f"SSIM {scores.ssim:.4f}{lpips_text}", flush=True)  # fmt: skip

    report = evaluate_reconstruction(videos, tokenizer, settings, lpips, i3d, on_video=progress)
    for skipped in report.skipped:
        print(f"divot-eval: skipped {printable(skipped['video'], 4096)} ({skipped['reason']}): "
              f"{printable(skipped['detail'], 500)}", file=sys.stderr)  # fmt: skip
    paths = write_report(report, Path(args.out))
    print(paths["markdown"].read_text(encoding="utf-8"), end="")
    print(f"written: {paths['markdown']}, {paths['json']}, {paths['plot']}")
    if report.skipped:
        print(f"divot-eval: {len(report.videos)} of {len(videos)} videos scored, {len(report.skipped)} skipped",
              file=sys.stderr)  # fmt: skip
        return EXIT_SKIPPED
    return 0


if __name__ == "__main__":
    sys.exit(main())
