"""``divot-infer lavit MODE``: Video-LaVIT's modes over a release root.

    divot-infer lavit t2v --release /models/Video-LaVIT-v1 "a panda eating bamboo" --out gen/
    divot-infer lavit i2v --release /models/Video-LaVIT-v1 girl.jpg --prompt "she turns" --out gen/
    divot-infer lavit long --release /models/Video-LaVIT-v1 "a boat leaves" "it sails away" --out gen/
    divot-infer lavit reconstruct --release /models/Video-LaVIT-v1 clip.mp4 --out recon/
    divot-infer lavit comprehend --release /models/Video-LaVIT-v1 clip.mp4 -q "What happens?"

--release is a folder in the layout of the published Video-LaVIT-v1 (language_model/,
language_model_sft/, visual_tokenizer/, motion_tokenizer.bin, video_detokenizer/,
image_detokenizer/), or one our LaVIT exports wrote. Each generating mode writes
OUT/<name>.mp4 and OUT/<name>_strip.png (the keyframe, then the clip's frames); reconstruct
writes the input clips above their reconstructions and metrics.json (PSNR, SSIM; LPIPS with
--lpips and --lpips-heads). An input that cannot be used is skipped with one line on stderr;
exit codes as for the other divot-infer commands (3: some inputs skipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from divot_llm.cli.display import PATH_LIMIT, printable

MODES = ("t2v", "i2v", "long", "reconstruct", "comprehend")


def add_lavit_parser(commands) -> None:
    """``divot-infer lavit`` and its five mode sub-commands."""
    lavit = commands.add_parser("lavit", help="Video-LaVIT: t2v, i2v, long, reconstruct, comprehend")
    modes = lavit.add_subparsers(dest="mode", required=True)
    t2v = modes.add_parser("t2v", help="prompt(s) -> keyframe + motion tokens -> video")
    t2v.add_argument("prompts", nargs="+")
    i2v = modes.add_parser("i2v", help="image(s) (+ --prompt) -> motion tokens -> video from the image")
    i2v.add_argument("images", nargs="+")
    i2v.add_argument("--prompt", default="", help="text with the image (default: none)")
    long = modes.add_parser("long", help="one prompt per segment -> one long video, clip after clip")
    long.add_argument("prompts", nargs="+", help="one per segment, in order")
    long.add_argument("--image", help="the first segment's keyframe (default: generated from its prompt)")
    rec = modes.add_parser(
        "reconstruct", help="video(s) -> keyframes + motion tokens -> video, PSNR/SSIM/LPIPS"
    )
    rec.add_argument("videos", nargs="+")
    rec.add_argument("--lpips", metavar="VGG16", help="VGG16 weights for LPIPS (eval.lpips_path)")
    rec.add_argument("--lpips-heads", metavar="HEADS", help="LPIPS linear heads (eval.lpips_heads_path)")
    comp = modes.add_parser("comprehend", help="video(s) + question -> answer")
    comp.add_argument("videos", nargs="+")
    comp.add_argument("-q", "--question", default="Describe the video.")
    comp.add_argument("--max-new-tokens", type=int, default=64)
    for mode in (t2v, i2v, long, rec, comp):
        mode.add_argument("--release", required=True, metavar="ROOT", help="a Video-LaVIT release root")
        mode.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
        mode.add_argument("--dtype", choices=("auto", "fp32", "bf16"), default="auto",
                          help="auto: bf16 on a GPU, fp32 on the CPU")  # fmt: skip
        mode.add_argument("--seed", type=int, default=42)
        mode.add_argument("--max-clips", type=int, help="clips per video read (reconstruct, comprehend)")
    for mode in (t2v, i2v, long, rec):
        mode.add_argument("--out", default="outputs/lavit", help="output folder (default outputs/lavit)")
        mode.add_argument("--steps", type=int, default=25, help="video de-tokenizer steps (default 25)")
        mode.add_argument("--min-guidance", type=float, default=1.0, help="first frame's guidance (1.0)")
        mode.add_argument("--max-guidance", type=float, default=4.0, help="last frame's guidance (4.0)")
    for mode in (t2v, i2v, long):
        mode.add_argument("--temperature", type=float, default=1.0)
        mode.add_argument("--top-k", type=int, default=0, help="0: no cut")
        mode.add_argument("--top-p", type=float, default=1.0)
        mode.add_argument("--keyframe-steps", type=int, default=25, help="image de-tokenizer steps (25)")
        mode.add_argument("--keyframe-guidance", type=float, default=7.0, help="its guidance scale (7.0)")


def run_lavit(args: argparse.Namespace) -> int:
    import torch

    from divot_llm.cli.display import SkippedInputs
    from divot_llm.infer.load import default_device
    from divot_llm.model.lavit_release import MissingPart, open_lavit_release

    device = torch.device(args.device) if args.device else default_device()
    dtype = (
        torch.bfloat16
        if args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
        else torch.float32
    )
    try:
        models = open_lavit_release(args.release, device, dtype, sft=args.mode == "comprehend")
        inputs = {
            "t2v": "prompts",
            "i2v": "images",
            "long": "image",
            "reconstruct": "videos",
            "comprehend": "videos",
        }
        given = getattr(args, inputs[args.mode])
        skipped = SkippedInputs(len(given) if isinstance(given, list) else 1)
        sampling = _sampling(args)
        run = {
            "t2v": _t2v,
            "i2v": _i2v,
            "long": _long,
            "reconstruct": _reconstruct,
            "comprehend": _comprehend,
        }
        run[args.mode](args, models, sampling, skipped)
    except MissingPart as exc:
        print(f"divot-infer lavit {args.mode}: {exc}", file=sys.stderr)
        return 1
    return skipped.exit_code()


def _sampling(args):
    from divot_llm.infer.lavit import Sampling

    options = {"seed": args.seed}
    for name in ("steps", "min_guidance", "max_guidance", "temperature", "top_k", "top_p",
                 "keyframe_steps", "keyframe_guidance"):  # fmt: skip
        if hasattr(args, name):
            options[name] = getattr(args, name)
    return Sampling(**options)


def _write(out: Path, name: str, video, strip_rows: list, fps: float) -> str:
    """``out/name.mp4`` (``video``: ``(F, 3, H, W)``) and ``out/name_strip.png`` (one row per
    clip of ``strip_rows``, at most 12 frames each); a line saying so."""
    from divot_llm.data.media_out import frame_strip, write_mp4

    out.mkdir(parents=True, exist_ok=True)
    write_mp4(out / f"{name}.mp4", video, fps)
    frame_strip(strip_rows, max_frames=12).save(out / f"{name}_strip.png")
    return f"{out / name}.mp4 ({len(video)} frames), {name}_strip.png"


def _write_clip(out: Path, name: str, clip, fps: float) -> str:
    """A generated clip, its strip led by the keyframe it was drawn from."""
    import torch

    return _write(out, name, clip.video, [torch.cat((clip.keyframe[None], clip.video))], fps)


def _t2v(args, models, sampling, skipped) -> None:
    from divot_llm.data.media_out import slug
    from divot_llm.infer.lavit import text_to_video

    for index, prompt in enumerate(args.prompts):
        clip = text_to_video(models, prompt, sampling, args.seed + index)
        written = _write_clip(Path(args.out), f"{index:03d}_{slug(prompt)}", clip, models.motion.fps)
        print(f"{printable(prompt)!r}: {len(clip.visual_codes)} keyframe codes -> {written}")


def _read_image(path: str, skipped):
    import numpy as np

    from divot_llm.data.errors import MediaError
    from divot_llm.data.images import open_rgb

    try:
        return np.asarray(open_rgb(path))
    except (MediaError, OSError) as exc:
        skipped.report(path, getattr(exc, "reason", "unreadable_image"), str(exc))
        return None


def _i2v(args, models, sampling, skipped) -> None:
    from divot_llm.data.media_out import slug
    from divot_llm.infer.lavit import image_to_video

    for index, path in enumerate(args.images):
        image = _read_image(path, skipped)
        if image is None:
            continue
        clip = image_to_video(models, image, args.prompt, sampling, args.seed + index)
        written = _write_clip(Path(args.out), f"{index:03d}_{slug(Path(path).stem)}", clip, models.motion.fps)
        print(f"{printable(path, PATH_LIMIT)}: {len(clip.visual_codes)} keyframe codes -> {written}")


def _long(args, models, sampling, skipped) -> None:
    import torch

    from divot_llm.infer.lavit import long_video

    image = None
    if args.image:
        image = _read_image(args.image, skipped)
        if image is None:
            return
    clips = long_video(models, args.prompts, sampling, image)
    video = torch.cat([c.video for c in clips])
    written = _write(Path(args.out), "long", video, [c.video for c in clips], models.motion.fps)
    print(f"{len(clips)} segments -> {written}")


def _reconstruct(args, models, sampling, skipped) -> None:
    import torch

    from divot_llm.config.schema import EvalConfig
    from divot_llm.data.errors import MediaError
    from divot_llm.data.media_out import slug
    from divot_llm.infer.evaluate import score_video
    from divot_llm.infer.lavit import reconstruct_video
    from divot_llm.metrics.lpips import load_lpips

    lpips = (
        load_lpips(EvalConfig(lpips_path=args.lpips, lpips_heads_path=args.lpips_heads))
        if args.lpips
        else None
    )
    out = Path(args.out)
    records = []
    for path in args.videos:
        try:
            result = reconstruct_video(models, path, sampling, args.max_clips)
        except MediaError as exc:
            skipped.report(path, exc.reason, exc.detail)
            continue
        name = slug(Path(path).stem)
        inputs, outputs = torch.cat(result.inputs), torch.cat(result.outputs)
        scores = score_video(name, outputs, inputs, lpips)
        _write(out, name, outputs, [inputs, outputs], result.fps)
        records.append({"video": str(path), "clips": len(result.outputs), "frames": scores.frames,
                        "psnr": scores.psnr, "ssim": scores.ssim, "lpips": scores.lpips})  # fmt: skip
        lpips_text = f", LPIPS {scores.lpips:.4f}" if scores.lpips is not None else ""
        print(f"{printable(path, PATH_LIMIT)}: {len(result.outputs)} clips, PSNR {scores.psnr:.2f} dB, SSIM {scores.ssim:.4f}{lpips_text} "
              f"-> {out / name}.mp4, {name}_strip.png")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(records, indent=1) + "\n")


def _comprehend(args, models, sampling, skipped) -> None:
    from divot_llm.data.errors import MediaError
    from divot_llm.infer.lavit import comprehend_video

    for path in args.videos:
        try:
            text = comprehend_video(models, path, args.question, args.max_new_tokens, args.max_clips)
        except MediaError as exc:
            skipped.report(path, exc.reason, exc.detail)
            continue
        print(f"{printable(path, PATH_LIMIT)}: {printable(text, 4000)}", flush=True)
