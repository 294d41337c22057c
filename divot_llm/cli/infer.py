"""``divot-infer``: comprehend, generate and reconstruct with a release.

    divot-infer comprehend --release releases/sft_comp clip.mp4 -q "What is the shape doing?"
    divot-infer comprehend --release releases/sft_comp *.mp4 --no-stream --jsonl answers.jsonl
    divot-infer generate --release releases/sft_gen "a red circle moving left" --out gen/
    divot-infer generate --release releases/vidtok_fsq_gen "a red circle moving left" --temperature 0.8 --top-k 4 --cfg-scale 2 --out gen/
    divot-infer reconstruct --release releases/sft_comp clip.mp4 --out recon/
    divot-infer reconstruct --video-tokenizer vidtok_kl_causal_488_4chn --ckpt checkpoints/vidtok_kl_causal_488_4chn.ckpt clip.mp4 --out recon/
    divot-infer comprehend --official pretrained/ demo_videos/wine.mp4      # Divot's own files
    divot-infer t2v "a red circle moving left" --release releases/t2v --cond-scale 2 --steps 50 --out x.mp4
    divot-infer lavit t2v --release /models/Video-LaVIT-v1 "a panda eating bamboo" --out gen/   # also i2v, long,
                                                                          # reconstruct, comprehend

--release takes a ``divot-merge`` output (its config.yaml says how it was built); for t2v,
a ``divot-export detokenizer`` output of a stage=t2v run;
--official takes a folder with Divot's released files in the layout of its README
(Divot_sft_comp/, Divot_sft_gen/, cvlm_mistral_instruct_tokenizer/,
Divot_tokenizer_detokenizer/, CLIP-ViT-H-14-laion2B-s32B-b79K/). reconstruct
--video-tokenizer takes instead a tokenizer that decodes itself (VidTok: a
conf/video_tokenizer option, weights from --ckpt or its pretrained_path): each whole video
is read at --fps, resized and centre-cropped to --height x --width (default VidTok's 30
fps, 256 x 256), reconstructed in chunks and written as mp4 with an input-above-output
strip and its PSNR/SSIM (LPIPS with --lpips and --lpips-heads), also in metrics.json.
A release over VidTok (video_tokenizer=vidtok_*) needs no de-tokenizer: generate decodes the
sampled features (model.head=gmm) or codes (model.head=fsq_*) with the tokenizer's own
decoder and writes them at --fps (default 8); --temperature, --top-k and --cfg-scale
change a code head's sampling (defaults: the release's model.code_head).
--set KEY=VALUE changes the config (repeatable), e.g. --set model.llm.attn_implementation=eager.

A file (or caption) that cannot be used -- missing, corrupt, no frames -- is skipped with
one line on stderr, "divot-infer: skipped FILE (reason): ...", and every other input is
still answered; --jsonl gets each answer as soon as it is produced. Exit codes: 0 every
input done; 1 the command could not run (e.g. reconstruct without a de-tokenizer); 2 a
usage or config error; 3 some inputs were skipped (the rest were written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from divot_llm.cli.display import PATH_LIMIT, SkippedInputs, printable
from divot_llm.cli.eval import READ_DEFAULTS, add_reconstruction_args
from divot_llm.cli.infer_lavit import add_lavit_parser, run_lavit

if TYPE_CHECKING:
    import torch

DEFAULT_QUESTION = "What does this video describe?"  # the reference's comprehension demo


def _add_model_args(p: argparse.ArgumentParser, video_tokenizer: bool = False) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--release", metavar="DIR", help="a divot-merge release folder")
    which.add_argument("--official", metavar="DIR", help="folder with Divot's official released files")
    if video_tokenizer:
        which.add_argument("--video-tokenizer", metavar="NAME",
                           help="a video tokenizer that decodes itself, e.g. vidtok_kl_causal_488_4chn, or a "
                                "saved one (divot-export vidtok: OUT/video_tokenizer); no LLM, no de-tokenizer")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config change (repeatable)")  # fmt: skip
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--dtype",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="LLM dtype (auto: bf16 on GPU); with --video-tokenizer the tokenizer's (auto: fp32)",
    )
    p.add_argument(
        "--seed", type=int, default=42, help="seed of every random draw (default 42, the reference's)"
    )


def _add_detok_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detokenizer", metavar="PATH",
                   help="de-tokenizer to use: a save_pretrained folder or a release weights file")  # fmt: skip
    p.add_argument("--steps", type=int, help="sampler steps (default: the de-tokenizer config's)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: config's)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="divot-infer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    comp = commands.add_parser("comprehend", help="video(s) or image(s) + question -> answer")
    _add_model_args(comp)
    comp.add_argument("media", nargs="+", help="video or image files")
    comp.add_argument("-q", "--question", help=f"default: {DEFAULT_QUESTION!r}; a pretrain release captions")
    comp.add_argument("--num-clips", type=int, default=20, help="2-s clips per video (default 20)")
    comp.add_argument("--max-new-tokens", type=int, default=256)
    comp.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    comp.add_argument("--temperature", type=float, default=0.7)
    comp.add_argument("--top-p", type=float, default=0.5)
    comp.add_argument("--top-k", type=int, default=50)
    comp.add_argument("--batch-size", type=int, default=4, help="videos per forward (default 4)")
    comp.add_argument("--no-stream", action="store_true", help="print answers only when complete")
    comp.add_argument("--jsonl", metavar="FILE", help="also write {media, question, answer} lines")

    gen = commands.add_parser("generate", help="caption(s) -> sampled features (GMM) or codes (FSQ) -> video")
    _add_model_args(gen)
    _add_detok_args(gen)
    gen.add_argument("captions", nargs="+", help="what to generate")
    gen.add_argument("--out", default="outputs/generate", help="output folder (default outputs/generate)")
    gen.add_argument(
        "--var-scale", type=float, help="GMM sampling variance scale (gmm head; default: the model's, 0.1)"
    )
    gen.add_argument("--mean", action="store_true",
                     help="take the GMM's weighted mean (a code head: the most likely code) instead of sampling")  # fmt: skip
    gen.add_argument("--temperature", type=float,
                     help="code sampling temperature (fsq_* heads; default: the release's model.code_head)")  # fmt: skip
    gen.add_argument("--top-k", type=int,
                     help="sample among the k likeliest values of each code, 0 = all (fsq_* heads; default: "
                          "the release's model.code_head)")  # fmt: skip
    gen.add_argument("--cfg-scale", type=float,
                     help="classifier-free guidance scale, 1 = none (fsq_* heads; default: the release's "
                          "model.code_head)")  # fmt: skip
    gen.add_argument("--fps", type=float,
                     help="frame rate of the written videos (default: the de-tokenizer's; 8 when the "
                          "video tokenizer decodes the features itself, as VidTok)")  # fmt: skip
    gen.add_argument("--media", choices=("video", "image"), default="video")
    gen.add_argument("--template", choices=("auto", "instruct", "caption"), default="auto",
                     help="prompt form: instruct (SFT-gen), caption (pretrain); auto from the release's stage")  # fmt: skip
    gen.add_argument("--jsonl", metavar="FILE", help="also write {caption, features, video, strip} lines")

    rec = commands.add_parser(
        "reconstruct",
        help="video -> tokenizer -> de-tokenizer (or the tokenizer's own decoder) -> video, PSNR/SSIM",
    )
    _add_model_args(rec, video_tokenizer=True)
    _add_detok_args(rec)
    add_reconstruction_args(rec, frames_required=False)
    rec.add_argument("videos", nargs="+")
    rec.add_argument(
        "--out", default="outputs/reconstruct", help="output folder (default outputs/reconstruct)"
    )

    t2v = commands.add_parser(
        "t2v", help="prompt(s) -> text encoder -> VDM de-tokenizer -> video (stage=t2v)"
    )
    t2v.add_argument("prompts", nargs="+", help="what to generate")
    t2v.add_argument("--release", required=True, metavar="DIR",
                     help="divot-export detokenizer output of a stage=t2v run")  # fmt: skip
    t2v.add_argument("--out", default="outputs/t2v.mp4",
                     help="video file, .mp4 or .gif (several prompts: <stem>_000.mp4, ...), and "
                          "<stem>_strip.png beside it (default outputs/t2v.mp4)")  # fmt: skip
    t2v.add_argument("--steps", type=int, help="sampler steps (default: the de-tokenizer config's)")
    t2v.add_argument("--cond-scale", type=float, help="classifier-free guidance scale (default: config's)")
    t2v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config change (repeatable), e.g. --set stage.text_encoder.path=/ckpt/bert")  # fmt: skip
    t2v.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    t2v.add_argument("--seed", type=int, default=42, help="seed of every random draw (default 42)")
    add_lavit_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from divot_llm.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "t2v":
            return _t2v(args)
        if args.command == "lavit":
            return run_lavit(args)
        if args.command == "reconstruct" and args.video_tokenizer:
            return _reconstruct_with_video_tokenizer(args)
        if args.command == "reconstruct":
            return_code = _refuse_flags(
                args, READ_DEFAULTS.keys() | {"ckpt", "lpips", "lpips_heads"}, "--video-tokenizer"
            )
            if return_code:
                return return_code
        cfg = _config(args)
        refused = _refuse_generate_flags(args, cfg) if args.command == "generate" else 0
        if refused:  # before anything is loaded
            return refused
        models = _load(args, cfg)
        return {"comprehend": _comprehend, "generate": _generate, "reconstruct": _reconstruct}[args.command](
            args, models
        )
    except ConfigError as exc:  # a bad --set, a missing path, a run folder as --release: nothing loaded
        print(f"divot-infer: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"divot-infer: {exc}", file=sys.stderr)
        return 1


def _config(args):
    from divot_llm.infer import official_config, release_config

    if args.release:
        return release_config(args.release, args.overrides)
    return official_config(args.official, args.command, args.overrides)


def _load(args, cfg):
    import torch

    from divot_llm.infer import load_inference_models

    dtype = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    return load_inference_models(
        cfg,
        with_llm=args.command != "reconstruct",
        detokenizer=getattr(args, "detokenizer", None),
        want_detokenizer=args.command != "comprehend",
        device=torch.device(args.device) if args.device else None,
        dtype=dtype,
    )


def _is_pretrain(models) -> bool:
    """A pretrain release was trained to caption and to generate from a bare caption."""
    return models.cfg.stage.name == "pretrain"


@contextlib.contextmanager
def _jsonl_lines(path: str | None) -> Iterator[Callable[[dict], None]]:
    """A writer of one json line per record, flushed at once so that every answer
    already given survives whatever happens later; a no-op without a path."""
    if path is None:
        yield lambda record: None
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:

        def write(record: dict) -> None:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

        yield write


def _readable_media(paths: list[str], models, args, skipped: SkippedInputs) -> list[tuple[str, tuple]]:
    """(path, (features, kind)) of each file that can be read; the others are reported."""
    from divot_llm.data.errors import MediaError
    from divot_llm.infer import ClipSampling, encode_media

    sampling = ClipSampling.of(models.cfg.data)  # the clips the model was trained on
    readable = []
    for path in paths:
        try:
            encoded = encode_media(path, models.video_tokenizer, args.num_clips, args.seed, sampling)
            readable.append((path, encoded))
        except MediaError as exc:
            skipped.report(path, exc.reason, exc.detail)
    return readable


def _comprehend(args, models) -> int:
    from divot_llm.infer import TextPrinter, answer_media

    question = args.question
    if question is None and not _is_pretrain(models):
        question = DEFAULT_QUESTION  # a pretrain release was trained to caption, not to answer
    sampling = {
        "do_sample": not args.greedy,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
    }
    stream = not args.no_stream
    batch = 1 if stream else max(1, args.batch_size)  # transformers streams one sample at a time
    skipped = SkippedInputs(len(args.media))
    with _jsonl_lines(args.jsonl) as write_record:
        for start in range(0, len(args.media), batch):
            readable = _readable_media(args.media[start : start + batch], models, args, skipped)
            if not readable:
                continue
            paths, encoded = [p for p, _ in readable], [e for _, e in readable]
            if stream:
                print(f"{printable(paths[0], PATH_LIMIT)}: ", end="", flush=True)
                printer = TextPrinter(models.text_tokenizer)
                answers = answer_media(models.model, models.text_tokenizer, encoded, question,
                                       streamer=printer, **sampling)  # fmt: skip
                if not printer.printed and answers[0]:  # nothing streamed (e.g. only special tokens)
                    print(answers[0])
            else:
                answers = answer_media(models.model, models.text_tokenizer, encoded, question, **sampling)
                for path, answer in zip(paths, answers, strict=True):
                    print(f"{printable(path, PATH_LIMIT)}: {answer}")
            for path, answer in zip(paths, answers, strict=True):
                write_record({"media": str(path), "question": question, "answer": answer})
    return skipped.exit_code()


def _encodable_captions(captions: list[str], skipped: SkippedInputs) -> list[tuple[int, str]]:
    """(index, caption) of the captions that are text a tokenizer can encode: bytes that
    are not UTF-8 on the command line reach Python as lone surrogates."""
    usable = []
    for index, caption in enumerate(captions):
        try:
            caption.encode("utf-8")
        except UnicodeEncodeError as exc:
            skipped.report(repr(caption), "bad_text", f"not valid UTF-8 ({exc.reason} at {exc.start})")
            continue
        usable.append((index, caption))
    return usable


def _generate(args, models) -> int:
    from safetensors.torch import save_file

    from divot_llm.data.media_out import frame_strip, slug, write_mp4
    from divot_llm.infer import generate_features_for_captions

    skipped = SkippedInputs(len(args.captions))
    captions = _encodable_captions(args.captions, skipped)
    if not captions:
        return skipped.exit_code()
    instruct = {"auto": not _is_pretrain(models), "instruct": True, "caption": False}[args.template]
    feats_bnd = generate_features_for_captions(
        models.model, models.text_tokenizer, [c for _, c in captions], media=args.media, instruct=instruct,
        sample=not args.mean, seed=args.seed, **_sampling_options(args, models.cfg.model),
    )  # fmt: skip
    decoder = _feature_decoder(args, models)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with _jsonl_lines(args.jsonl) as write_record:
        for row, (index, caption) in enumerate(captions):
            name = f"{index:03d}_{slug(caption)}"
            feats = feats_bnd[row : row + 1].float().cpu()
            record = {"caption": caption, "features": str(out / f"{name}.safetensors")}
            save_file({"features": feats[0].contiguous()}, record["features"], metadata={"caption": caption})
            if decoder is None:
                print(f"{caption!r}: features {tuple(feats.shape[1:])} -> {record['features']}")
                write_record(record)
                continue
            video = decoder.decode(feats, index)
            record["video"] = str(write_mp4(out / f"{name}.mp4", video, decoder.fps))
            record["strip"] = str(out / f"{name}_strip.png")
            frame_strip([video]).save(record["strip"])
            write_record(record)
            print(
                f"{caption!r}: {record['video']} ({video.shape[0]} frames at {decoder.fps:g} fps), "
                f"{name}_strip.png, features in {name}.safetensors"
            )
    if decoder is None:
        print(
            "no de-tokenizer with weights is configured, so only the features were saved; pass "
            "--detokenizer PATH (or set detokenizer.pretrained_path) to decode them to video"
        )
    return skipped.exit_code()


def _refuse_generate_flags(args, cfg) -> int:
    """2 (said on stderr) for sampling flags of the other kind of head, or de-tokenizer
    flags when the video tokenizer decodes the features itself; else 0."""
    from divot_llm.infer.load import decodes_itself

    if cfg.model.head == "gmm":
        head = _refuse_flags(args, ("temperature", "top_k"), "a code head (model.head=fsq_*)")
    else:
        head = _refuse_flags(args, ("var_scale",), "a GMM head (model.head=gmm)")
    if head or args.detokenizer is not None or not decodes_itself(cfg):
        return head
    return _refuse_flags(args, ("steps", "guidance"), "a de-tokenizer (--detokenizer)")


def _sampling_options(args, model_cfg) -> dict:
    """The generation head's sampling options: the GMM's variance scale, or a code head's
    temperature and top-k; the guidance scale for either (a GMM head refuses any but 1).
    What is not given is the release's: ``model.code_head``, the GMM's own variance scale."""
    cfg_scale = model_cfg.code_head.cfg_scale if args.cfg_scale is None else args.cfg_scale
    if model_cfg.head == "gmm":
        return {"var_scale": args.var_scale, "cfg_scale": cfg_scale}
    # None: the model takes model.code_head's
    return {"code_temperature": args.temperature, "code_top_k": args.top_k, "cfg_scale": cfg_scale}


VIDTOK_FPS = 8.0  # default rate of videos a tokenizer decodes itself: the synthetic set's


@dataclass
class _FeatureDecoder:
    """Generated features -> one clip ``(F, 3, H, W)`` in [-1, 1], written at ``fps``."""

    decode: Callable[[torch.Tensor, int], torch.Tensor]  # (feats (1, N, D), caption index) -> clip
    fps: float


def _feature_decoder(args, models) -> _FeatureDecoder | None:
    """What turns generated features into frames: the de-tokenizer (``--detokenizer`` or a
    configured one with weights), else a video tokenizer that decodes itself (VidTok:
    ``decode_features``; ``load_inference_models`` loads no configured de-tokenizer for
    it), else None (only the features are saved)."""
    from divot_llm.infer.load import decodes_itself

    detok, tokenizer = models.detokenizer, models.video_tokenizer
    if detok is not None:

        def detokenize(feats_1nd: torch.Tensor, index: int) -> torch.Tensor:
            clips = detok.decode(feats_1nd, steps=args.steps, guidance=args.guidance, seed=args.seed + index)
            return clips[0]

        return _FeatureDecoder(detokenize, args.fps or detok.fps)
    if not decodes_itself(models.cfg):
        return None

    def decode(feats_1nd: torch.Tensor, index: int) -> torch.Tensor:
        return tokenizer.decode_features(feats_1nd.to(tokenizer.device, tokenizer.dtype))[0].float()

    return _FeatureDecoder(decode, args.fps or VIDTOK_FPS)


def _reconstruct(args, models) -> int:
    from divot_llm.data.errors import MediaError
    from divot_llm.data.media_out import frame_strip, slug, write_mp4
    from divot_llm.infer import reconstruct

    if models.detokenizer is None:
        print(
            "divot-infer: reconstruct needs a de-tokenizer with weights: pass --detokenizer PATH "
            "or set detokenizer.pretrained_path",
            file=sys.stderr,
        )
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scores = []
    skipped = SkippedInputs(len(args.videos))
    for index, video in enumerate(args.videos):
        try:
            result = reconstruct(
                video, models.video_tokenizer, models.detokenizer, args.steps, args.guidance, args.seed
            )
        except FileNotFoundError as exc:
            skipped.report(video, "missing_file", exc.strerror or str(exc))
            continue
        except MediaError as exc:
            skipped.report(video, exc.reason, exc.detail)
            continue
        name = f"{index:03d}_{slug(Path(video).stem)}"
        write_mp4(out / f"{name}.mp4", result.output, models.detokenizer.fps)
        frame_strip([result.input, result.output]).save(out / f"{name}_strip.png")
        scores.append((result.psnr, result.ssim))
        print(
            f"{printable(video, PATH_LIMIT)}: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.4f} "
            f"-> {out / name}.mp4, {name}_strip.png"
        )
    if len(scores) > 1:
        psnr, ssim = (sum(s[i] for s in scores) / len(scores) for i in (0, 1))
        print(f"mean over {len(scores)} videos: PSNR {psnr:.2f} dB, SSIM {ssim:.4f}")
    return skipped.exit_code()


def _refuse_flags(args, flags, belongs_to: str) -> int:
    """2 (a usage error, said on stderr) when any of ``flags`` was given, else 0."""
    given = sorted(f"--{f.replace('_', '-')}" for f in flags if getattr(args, f) is not None)
    if not given:
        return 0
    print(f"divot-infer: {', '.join(given)} go with {belongs_to}", file=sys.stderr)
    return 2


def _reconstruct_with_video_tokenizer(args) -> int:
    """reconstruct --video-tokenizer: whole videos through a tokenizer that decodes itself."""
    import dataclasses

    import torch

    from divot_llm.cli.eval import eval_config
    from divot_llm.data.errors import MediaError
    from divot_llm.data.media_out import frame_strip, slug, write_mp4
    from divot_llm.infer.evaluate import (
        load_reconstructing_tokenizer,
        read_video,
        reconstruct_frames,
        score_video,
    )
    from divot_llm.infer.load import default_device
    from divot_llm.metrics import load_lpips

    refused = _refuse_flags(args, ("detokenizer", "steps", "guidance"), "--release/--official")
    if refused:
        return refused
    for flag, value in READ_DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, value)
    cfg = eval_config(args)
    device = torch.device(args.device) if args.device else default_device()
    tokenizer = load_reconstructing_tokenizer(
        cfg, device, torch.bfloat16 if args.dtype == "bf16" else torch.float32
    )
    lpips = load_lpips(cfg.eval)
    lpips = lpips.to(device) if lpips is not None else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    skipped = SkippedInputs(len(args.videos))
    for index, video in enumerate(args.videos):
        try:
            frames, rate = read_video(video, args.height, args.width, args.fps)
        except FileNotFoundError as exc:
            skipped.report(video, "missing_file", exc.strerror or str(exc))
            continue
        except MediaError as exc:
            skipped.report(video, exc.reason, exc.detail)
            continue
        recon = reconstruct_frames(tokenizer, frames)
        scores = score_video(video, recon, frames, lpips)
        name = f"{index:03d}_{slug(Path(video).stem)}"
        write_mp4(out / f"{name}.mp4", recon, rate)
        frame_strip([frames, recon]).save(out / f"{name}_strip.png")
        records.append({**dataclasses.asdict(scores), "fps": rate, "output": str(out / f"{name}.mp4"),
                        "strip": str(out / f"{name}_strip.png")})  # fmt: skip
        lpips_text = f", LPIPS {scores.lpips:.4f}" if scores.lpips is not None else ""
        print(
            f"{printable(video, PATH_LIMIT)}: {scores.frames} frames at {rate:g} fps, PSNR {scores.psnr:.2f} dB, "
            f"SSIM {scores.ssim:.4f}{lpips_text} -> {out / name}.mp4, {name}_strip.png"
        )
    (out / "metrics.json").write_text(json.dumps(records, indent=1) + "\n")
    return skipped.exit_code()


def _t2v(args) -> int:
    import torch

    from divot_llm.data.media_out import frame_strip, write_gif, write_mp4
    from divot_llm.infer.t2v import load_t2v, output_paths
    from divot_llm.model.t2v import text_to_video

    writers = {".mp4": write_mp4, ".gif": write_gif}
    suffix = Path(args.out).suffix.lower()
    if suffix not in writers:
        print(f"divot-infer: --out must end in .mp4 or .gif, got {args.out!r}", file=sys.stderr)
        return 2
    skipped = SkippedInputs(len(args.prompts))
    prompts = _encodable_captions(args.prompts, skipped)
    if not prompts:
        return skipped.exit_code()
    device = torch.device(args.device) if args.device else None
    models = load_t2v(args.release, args.overrides, device=device)
    detok = models.detokenizer
    paths = output_paths(args.out, len(args.prompts))  # by the prompt's place on the command line
    for index, prompt in prompts:
        path = paths[index]
        video = text_to_video(
            models.text_encoder, detok, [prompt], args.steps, args.cond_scale, args.seed + index
        )[0]
        writers[suffix](path, video, detok.fps)
        strip = path.with_name(f"{path.stem}_strip.png")
        frame_strip([video], max_frames=video.shape[0]).save(strip)
        print(f"{prompt!r}: {path} ({video.shape[0]} frames at {detok.fps} fps), {strip.name}")
    return skipped.exit_code()


if __name__ == "__main__":
    sys.exit(main())
