"""The 7B GPU check: the real Mistral-7B shapes (random init) with the Divot tokenizer's
ViT-H, real ``Trainer.train_step``s with ZeRO-2 on one GPU, per kind of batch, from frames
and from cached features.

    tools/bench/gpu_7b.sh --budget-s 420                  # on the GPU machine (wheels first)
    python tools/bench/gpu_7b.py --budget-s 420           # the same, packages installed
    python tools/bench/gpu_7b.py --tiny                   # tiny models on CPU (CI runs this)

Cases, each with the shapes of a source of the experiment's data config:

* ``webvid``: video comprehension with WebVid-like durations (median 15 s, 4-60 s), so
  clip counts vary from sample to sample (``webvid_comp``: 8 samples, up to 20 clips);
* ``gen``: video generation (``webvid_gen``: 32 samples of one clip's queries);
* ``comp20``: video comprehension where every sample has the full 20 clips (the largest
  batch of the mix);

first from frames (the frozen tokenizer encodes the clips in the step), then from a
feature cache built beforehand with the library's cache builder (``data.feature_cache``).
Per case it prints tokens/s, MFU and HFU (the trainer's FLOP counts of the timed steps
against the device peak), the padding fraction (pad tokens / all tokens of the case's
batches), peak memory next to the ``plan=true`` estimate for that batch kind, and the
attention kernel the model ran; then the modelled pretrain mix (the WebVid comprehension
and generation cases weighted as the data config weights their sources; the image
sources are not in it).

Lines are printed (flushed) case by case; with ``$OUT`` set, a JSON summary is rewritten
there after every case, so a run cut off by its time limit keeps what it measured. A
case is skipped when starting it would pass ``--budget-s`` (measured from the start, the
estimate being the last case's duration). A case that fails (e.g. out of memory) is
reported and the next one runs.

Data: synthetic videos of set durations (``divot_llm.data.synthetic``: h264, 8 fps) behind
one jsonl source per case, read by the real loader. Random weights: the numbers measure
speed and memory only. ``--tiny``: ``experiment=demo`` (tiny Mistral, tiny tokenizer) on
CPU, one step per case; MFU there is against a measured CPU GEMM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from divot_llm.config import DivotConfig, compose_config, config_to_dict
from divot_llm.config.schema import MixMode, SourceKind
from divot_llm.data.cache_build import build_feature_cache
from divot_llm.data.feature_cache import expected_info
from divot_llm.data.loader import build_loader
from divot_llm.data.synthetic import encode_synthetic_video, sample_video_spec
from divot_llm.model import llm_tokens_per_clip
from divot_llm.train import distributed
from divot_llm.train.fixed_batches import FixedBatches
from divot_llm.train.metrics import peak_memory_gib
from divot_llm.train.plan import GiB, MemoryPlan, make_plan, recompute_name
from divot_llm.train.trainer import LogAccumulator, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benches, when imported
from train_step import time_steps  # noqa: E402

# The 7B shapes without any weight file: random init; the tokenizer comes from --tokenizer.
RANDOM_7B = (
    "experiment=pretrain_7b",
    "model.llm.path=null",
    "video_tokenizer.pretrained_path=null",
    "video_tokenizer.vit_path=null",
    "detokenizer.pretrained_path=null",
)
TINY = ("experiment=demo",)
VIDEO_FPS = 8  # the loader samples at 8 fps: no frame is decoded for nothing


@dataclass(frozen=True)
class Case:
    """A kind of batch: the shapes of ``source`` (a source of the experiment's data
    config) over synthetic videos of the given durations (one per sample)."""

    name: str
    source: str  # its batch size, max_length, num_clips, task and weight are used
    # full: every sample gets num_clips clips; webvid: WebVid-like lengths; short: one clip
    durations: Literal["full", "webvid", "short"]


FULL_CASES = (
    Case("webvid", "webvid_comp", "webvid"),
    Case("gen", "webvid_gen", "short"),
    Case("comp20", "webvid_comp", "full"),
)
TINY_CASES = (
    Case("webvid", "video_comp", "webvid"),
    Case("gen", "video_gen", "short"),
    Case("comp20", "video_comp", "full"),
)
MIX = ("webvid", "gen")  # the cases the modelled pretrain mix weights


def durations_s(case: Case, num_clips: int, count: int, seed: int) -> list[float]:
    """Video durations for ``count`` samples. A clip is a 2-s window (16 frames at 8 fps):
    ``full`` videos are long enough for every clip to get its own segment; ``webvid``
    draws WebVid-10M-like lengths (log-normal, median 15 s, clipped to 4-60 s), scaled
    by num_clips / 20 so a tiny config keeps the same spread of clip counts."""
    if case.durations == "full":
        return [2.0 * num_clips + 2.0] * count
    if case.durations == "short":
        return [4.0] * count
    rng = np.random.default_rng(seed)
    raw = np.clip(rng.lognormal(mean=math.log(15.0), sigma=0.6, size=count), 4.0, 60.0)
    return [round(float(d) * num_clips / 20, 2) for d in raw]


def write_case_videos(root: Path, case: Case, num_clips: int, count: int, size: int, seed: int = 0) -> str:
    """Synthetic videos of the case's durations + a jsonl of captions under ``root``;
    returns the jsonl path relative to ``root``."""
    lines = []
    for index, duration in enumerate(durations_s(case, num_clips, count, seed)):
        spec = dataclasses.replace(
            sample_video_spec(seed, "train", index),
            key=f"{case.name}-{index:04d}",
            duration_s=duration,
            fps=VIDEO_FPS,
            width=size,
            height=size,
            codec="h264",
            variable_frame_rate=False,
            display_rotation=0,
        )
        media = root / "media" / "videos" / f"{spec.key}.mp4"
        media.parent.mkdir(parents=True, exist_ok=True)
        media.write_bytes(encode_synthetic_video(spec))
        lines.append({"video": f"videos/{media.name}", "caption": spec.scene.caption(0)})
    annotations = root / "annotations" / f"{case.name}.jsonl"
    annotations.parent.mkdir(parents=True, exist_ok=True)
    annotations.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(annotations.relative_to(root))


@dataclass
class Result:
    case: str
    source: str
    features: str  # "frames" | "cache"
    status: str = "ok"  # ok | failed: ... | skipped: ...
    seconds: float = 0.0  # wall time of the case (loading included)
    numbers: dict[str, float | str] = field(default_factory=dict)


class Check:
    """The run: one trainer (built once: the 7B init is the slow part), the cases' data,
    results printed and saved as they come."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.started = time.perf_counter()
        self.results: list[Result] = []
        self.header: dict[str, float | str] = {}
        self.plans: dict[tuple[str, bool], MemoryPlan] = {}
        self.cases = [c for c in (TINY_CASES if args.tiny else FULL_CASES) if c.name in args.cases]

    # ------------------------------------------------------------------ set-up

    def compose(self) -> DivotConfig:
        """The experiment with the cases' jsonl sources in place of its own (batch mixing:
        every batch comes from one source, with that source's shapes)."""
        base = list(TINY if self.args.tiny else RANDOM_7B)
        if self.args.tokenizer:
            base.append(f"model.tokenizer_path={self.args.tokenizer}")
        elif not self.args.tiny:
            base.append("model.tokenizer_path=null")  # the Mistral tokenizer of mistral-common
        root = self.workdir / "data"
        run = [
            f"data.root={root}",
            f"data.num_workers={self.args.workers}",
            f"train.output_dir={self.workdir / 'run'}",
            "train.resume=none",
            "train.tensorboard=false",
            "train.progress_bar=false",
            "train.wandb=false",
            "train.plan_gpus_per_node=1",
            "train.plan_nodes=1",
        ]
        root.mkdir(parents=True, exist_ok=True)
        cfg = compose_config([*base, *run, *self.args.overrides])
        size = 64 if self.args.tiny else 128  # the loader resizes to the tokenizer's input
        sources = {}
        for case in self.cases:
            shape = cfg.data.sources[case.source]
            count = shape.batch_size * self.args.batches
            paths = [write_case_videos(root, case, shape.num_clips, count, size)]
            sources[case.name] = dataclasses.replace(
                shape, kind=SourceKind.jsonl, paths=paths, media_root="media", min_resolution=0
            )
        self.weights = {c.name: cfg.data.sources[c.source].weight for c in self.cases}
        data = dataclasses.replace(cfg.data, sources=sources, val_sources={}, mixing=MixMode.batch)
        return dataclasses.replace(cfg, data=data)

    def setup(self) -> None:
        start = time.perf_counter()
        self.cfg = self.compose()
        self.fixed = FixedBatches([])  # each case puts its batches here
        self.trainer = Trainer(self.cfg, build_loader=lambda *args, **kwargs: self.fixed)
        self.trainer.setup()
        self.trainer.engine.train()
        tok = self.trainer.video_tokenizer
        self.info = expected_info(tok, config_to_dict(self.cfg.video_tokenizer), self.cfg.data)
        t = self.trainer
        peak = f"{t.peak.flops / 1e12:.4g} TFLOP/s ({t.peak.source})" if t.peak else "unknown"
        self.header = {
            "device": torch.cuda.get_device_name(t.device) if t.device.type == "cuda" else "cpu",
            "dtype": str(t.dtype).removeprefix("torch."),
            "zero_stage": self.cfg.deepspeed.zero_stage,
            "trainable_m": t.trainable_params / 1e6,
            "total_m": t.total_params / 1e6,
            "tokenizer": self.cfg.video_tokenizer.name,
            "recompute": recompute_name(self.cfg.model.llm.checkpoint_every),
            "packing": str(self.cfg.data.packing),
            "peak": peak,
            "setup_s": time.perf_counter() - start,
        }
        say(
            f"{self.cfg.experiment_name}: {self.header['device']}, {self.header['dtype']}, "
            f"ZeRO-{self.header['zero_stage']}, {t.total_params / 1e6:,.1f} M parameters in the LLM + heads "
            f"({t.trainable_params / 1e6:.1f} M trainable), tokenizer {self.header['tokenizer']}; "
            f"peak {peak}; set-up {self.header['setup_s']:.1f} s"
        )
        self.save()

    def case_cfg(self, case: Case, cached: bool) -> DivotConfig:
        data = dataclasses.replace(
            self.cfg.data,
            sources={case.name: self.cfg.data.sources[case.name]},
            feature_cache=str(self.workdir / "cache") if cached else None,
        )
        return dataclasses.replace(self.cfg, data=data)

    def plan(self, case: Case, case_cfg: DivotConfig, cached: bool) -> MemoryPlan:
        """``plan=true``'s estimate for the case's source (cases sharing one share it)."""
        key = (case.source, cached)
        if key not in self.plans:
            self.plans[key] = make_plan(case_cfg)[0]
        return self.plans[key]

    def build_cache(self) -> None:
        start = time.perf_counter()
        counts = build_feature_cache(
            self.cfg.data,
            self.trainer.video_tokenizer,
            self.info,
            self.workdir / "cache",
            splits=("train",),
            workers=self.args.workers,
        )
        self.header["cache_s"] = time.perf_counter() - start
        say(f"feature cache: {counts['written']} samples encoded in {self.header['cache_s']:.1f} s")

    def batches(self, case_cfg: DivotConfig, cached: bool) -> list[dict]:
        tok = self.trainer.video_tokenizer
        loader = build_loader(
            case_cfg.data,
            self.trainer.text_tokenizer,
            tokens_per_clip=llm_tokens_per_clip(case_cfg.model, tok),
            frames_per_clip=tok.frames_per_clip,
            image_size=tok.input_size,
            cache_info=self.info if cached else None,
        )
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == self.args.batches:
                return out
        raise RuntimeError("the case's source gave fewer batches than asked for")

    # ------------------------------------------------------------------ cases

    def run(self) -> None:
        self.setup()
        last = 0.0
        for cached in (False, True):
            if cached and self.cases:
                if self.over_budget(last):
                    self.skip_all(cached, "skipped: budget")
                    continue
                try:
                    self.build_cache()
                except Exception as exc:  # the frames cases' results stand
                    traceback.print_exc(file=sys.stderr)
                    self.skip_all(cached, f"failed: the feature cache: {type(exc).__name__}: {exc}"[:300])
                    continue
            for case in self.cases:
                features = "cache" if cached else "frames"
                if self.over_budget(last):
                    self.record(Result(case.name, case.source, features, status="skipped: budget"))
                    continue
                result = self.run_case(case, cached)
                last = result.seconds
                self.record(result)
        self.mix()
        self.save()

    def over_budget(self, estimate_s: float) -> bool:
        return time.perf_counter() - self.started + estimate_s > self.args.budget_s

    def skip_all(self, cached: bool, status: str) -> None:
        for case in self.cases:
            self.record(Result(case.name, case.source, "cache" if cached else "frames", status=status))

    def run_case(self, case: Case, cached: bool) -> Result:
        start = time.perf_counter()
        result = Result(case.name, case.source, "cache" if cached else "frames")
        trainer, device = self.trainer, self.trainer.device
        try:
            case_cfg = self.case_cfg(case, cached)
            batches = self.batches(case_cfg, cached)
            plan = self.plan(case, case_cfg, cached)
            self.fixed.batches, self.fixed.position = batches, 0
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            logged: list[LogAccumulator] = []

            def step() -> None:
                logged.append(LogAccumulator())
                trainer.train_step(logged[-1])

            times = time_steps([step], self.args.steps, self.args.warmup, device)[0]
            result.numbers = self.numbers(batches, times, logged[self.args.warmup :], plan.gpu_total_bytes)
        except Exception as exc:  # reported, and the next case runs (an OOM should not end the check)
            result.status = f"failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
            traceback.print_exc(file=sys.stderr)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        result.seconds = time.perf_counter() - start
        return result

    def numbers(
        self, batches: list[dict], times: list[float], logged: list[LogAccumulator], plan_bytes: float
    ) -> dict[str, float | str]:
        seconds = sum(times)
        tokens = sum(a.tokens for a in logged)
        flops, hw_flops = sum(a.flops for a in logged), sum(a.hw_flops for a in logged)
        real = sum(int((b["attention_mask"] != 0).sum()) for b in batches)
        total = sum(b["attention_mask"].numel() for b in batches)
        clips = sum(int((b["embeds_cmp_mask"] | b["embeds_gen_mask"]).sum()) for b in batches)
        samples = sum(b["input_ids"].shape[0] for b in batches)
        peak = self.trainer.peak
        module = self.trainer.stage.module
        return {
            "step_ms": statistics.median(times) * 1e3,
            "seconds_per_step": seconds / len(times),
            "flops_per_step": flops / len(times),
            "samples_per_batch": samples / len(batches),
            "tokens_per_batch": total / len(batches),  # rows x row length
            "clips_per_sample": clips / samples,
            "tokens_per_s": tokens / seconds,
            "tflops": flops / seconds / 1e12,
            "mfu": flops / seconds / peak.flops if peak else float("nan"),
            "hfu": hw_flops / seconds / peak.flops if peak else float("nan"),
            "padding": 1 - real / total,
            "peak_gib": peak_memory_gib(self.trainer.device),
            "plan_gib": plan_bytes / GiB,
            "attention": getattr(module, "last_attention_kernel", self.cfg.model.llm.attn_implementation),
        }

    def record(self, result: Result) -> None:
        self.results.append(result)
        label = f"case {result.case}/{result.features}"
        n = result.numbers
        if result.status != "ok":
            say(f"{label}: {result.status}")
        else:
            memory = "peak RSS" if self.trainer.device.type == "cpu" else "peak"
            say(
                f"{label}: {n['samples_per_batch']:.0f} x {n['tokens_per_batch'] / n['samples_per_batch']:.0f} "
                f"tokens, {n['clips_per_sample']:.1f} clips/sample | step {n['step_ms']:.1f} ms | "
                f"tokens/s {n['tokens_per_s']:,.0f} | MFU {n['mfu']:.1%} HFU {n['hfu']:.1%} | "
                f"padding {n['padding']:.1%} | {memory} {n['peak_gib']:.2f} GiB vs plan {n['plan_gib']:.2f} GiB | "
                f"attention {n['attention']} | {result.seconds:.1f} s"
            )
        self.save()

    def mix(self) -> None:
        """The pretrain mix's MFU: batch mixing draws a source per step with probability
        ~ its weight, so a step's expected FLOPs and time are the weighted means."""
        peak = self.trainer.peak
        for features in ("frames", "cache"):
            done = {r.case: r.numbers for r in self.results if r.features == features and r.status == "ok"}
            if not peak or not all(name in done for name in MIX):
                continue
            w = {name: self.weights[name] for name in MIX}
            flops = sum(w[name] * done[name]["flops_per_step"] for name in MIX)
            seconds = sum(w[name] * done[name]["seconds_per_step"] for name in MIX)
            self.header[f"mix_mfu_{features}"] = flops / seconds / peak.flops
            weights = " : ".join(f"{name} {w[name]:g}" for name in MIX)
            say(
                f"pretrain mix from {features} ({weights}; no image sources): MFU {flops / seconds / peak.flops:.1%}"
            )

    def save(self) -> None:
        out = os.environ.get("OUT")
        if not out:
            return
        summary = {
            **self.header,
            "elapsed_s": time.perf_counter() - self.started,
            "cases": [dataclasses.asdict(r) for r in self.results],
        }
        path = Path(out) / "gpu_7b.json"
        path.write_text(json.dumps(summary, indent=1, default=str) + "\n")


def say(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU (the CI smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (5; tiny: 1)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first, per case (2; tiny: 0)")
    parser.add_argument("--batches", type=int, default=None, help="distinct batches per case (2; tiny: 1)")
    parser.add_argument(
        "--budget-s", type=float, default=420.0, help="skip the cases that would end past this"
    )
    parser.add_argument("--tokenizer", default=None, help="folder with the Mistral tokenizer.model")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="decoding processes (0: here; a case reads a few dozen short videos)",
    )
    parser.add_argument(
        "--cases", nargs="+", default=[c.name for c in FULL_CASES], choices=[c.name for c in FULL_CASES]
    )
    parser.add_argument(
        "--workdir", default=None, help="data, cache and run folder (default: a temporary one)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. model.llm.attn_implementation=eager"
    )
    args = parser.parse_args(argv)
    args.steps = args.steps or (1 if args.tiny else 5)
    if args.warmup is None:  # the first steps of a shape grow the allocator's pool and pick kernels
        args.warmup = 0 if args.tiny else 2
    args.batches = args.batches or (1 if args.tiny else 2)

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    joined = torch.distributed.is_initialized()  # in-process (tests): the group is not ours to end
    with tempfile.TemporaryDirectory(prefix="gpu_7b_") as tmp:
        check = Check(args, Path(args.workdir or tmp))
        try:
            check.run()
        finally:
            if hasattr(check, "trainer"):
                check.trainer.cleanup()
    if not joined:
        distributed.shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
