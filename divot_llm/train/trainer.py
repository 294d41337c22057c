"""The training recipe: one readable class, ``setup() -> train() -> cleanup()``.

One optimizer step = ``train.grad_accum_steps`` micro-batches on every rank. Each
micro-batch: the loader's frames go through the frozen video tokenizer (no_grad, bf16 on
GPU) unless the batch already carries cached ``video_feats``; the DeepSpeed engine runs
forward, backward and -- at the accumulation boundary -- clip, optimizer and schedule.

Every rank takes part in one small all-reduce per micro-batch *before* backward. It
carries the loss (for logging), the token/sample/FLOP counts, a "loss not finite" flag
and a "stop requested" flag, so all ranks make the same decision at the same point:
skip a micro-batch whose loss is NaN/inf on any rank (no rank enters backward's
collectives alone), and stop for a signal together.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from divot_llm.config.loading import save_resolved_config
from divot_llm.train import checkpoint, distributed
from divot_llm.train.engine import build_engine, resolve_dtype
from divot_llm.train.metrics import FlopModel, device_peak, peak_memory_gib, tokenizer_flops_per_clip
from divot_llm.train.tracking import Tracker
from divot_llm.train.validate import validate

MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "labels", "ids_cmp_mask", "ids_gen_mask")
CLIP_MASK_KEYS = ("embeds_cmp_mask", "embeds_gen_mask")
PACKED_KEYS = ("segment_ids", "position_ids")  # only in packed batches (data.packing)

FINISHED, INTERRUPTED = "finished", "interrupted"


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf losses in a row: training diverged or the data is corrupt."""


@dataclass
class Window:
    """Sums over the micro-batches since the last log line (all ranks)."""

    micro: int = 0
    loss: float = 0.0
    lm: float = 0.0
    gmm: float = 0.0
    tokens: float = 0.0
    samples: float = 0.0
    flops: float = 0.0
    hw_flops: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    lr: float = 0.0  # of the last update (read before DeepSpeed steps the schedule)


@contextlib.contextmanager
def stop_signals_deferred():
    """Hold SIGTERM/SIGINT while the data loader runs (delivered right after).

    Data-loader workers are forked inside ``next()`` and inherit this signal mask, so
    they never see the SIGTERM/SIGINT that a scheduler, Ctrl-C or the ``deepspeed``
    launcher sends to every process: torch's worker handler would otherwise die on it
    and the main process would raise "DataLoader worker ... killed" mid-step, before it
    could checkpoint. The trainer decides when to stop; workers end with their parent.
    """
    stop = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_models(cfg: Any, dtype: torch.dtype):
    """(text tokenizer, video tokenizer, model) of a stage, built on the CPU from ``train.seed``.

    Everything random at build time -- the tokenizer and LLM of tiny random-init configs,
    the LoRA and projection inits -- comes from this one seeded sequence on the CPU, so
    every rank, a resumed run and the release export (whose checkpoints hold no frozen
    weights) rebuild the same values whatever the device.
    """
    from divot_llm.model import build_divot_llm
    from divot_llm.text import load_text_tokenizer
    from divot_llm.tokenizers import build_video_tokenizer

    seed_everything(int(cfg.train.seed))
    text_tokenizer = load_text_tokenizer(cfg.model.tokenizer_path)
    video_tokenizer = build_video_tokenizer(cfg.video_tokenizer)
    model = build_divot_llm(
        cfg.model,
        tokens_per_clip=video_tokenizer.num_tokens,
        feature_dim=video_tokenizer.feature_dim,
        train_input_proj=cfg.stage.train_input_proj,
        train_output_proj=cfg.stage.train_output_proj,
        init_from=cfg.stage.init_from,
        dtype=dtype,
    )
    return text_tokenizer, video_tokenizer, model


class Trainer:
    """Trains one stage as ``cfg`` describes.

    Args:
        cfg: The composed run config (``DivotConfig`` shape).
        build_loader: ``divot_llm.data.loader.build_loader`` or a function with its
            signature (tests pass hand-made batches through the same interface).
    """

    def __init__(self, cfg: Any, build_loader=None):
        self.cfg = cfg
        if build_loader is None:
            from divot_llm.data.loader import build_loader
        self._build_loader = build_loader
        self.step = 0
        self.nonfinite_total = 0
        self._nonfinite_in_row = 0
        self._stop_signal: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._val_loader = None

    # ================================================================== setup

    def setup(self) -> None:
        """Process group, output dir + resolved config, models, engine, data, resume."""
        cfg = self.cfg
        self.dist = distributed.init_distributed()
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.device = self.dist.device
        self.dtype = resolve_dtype(cfg.deepspeed.precision, self.device)
        self.output_dir = Path(cfg.train.output_dir)
        if self.dist.is_main:
            save_resolved_config(cfg, self.output_dir)
        self.config_yaml = OmegaConf.to_yaml(_resolved(cfg))
        self.writer = checkpoint.CheckpointWriter(self.output_dir, self.dist.rank, int(cfg.train.keep_last))
        self.writer.remove_stale_temp_dirs()

        # Models are built from train.seed on every rank (build_models), then each rank
        # gets its own stream for dropout so ranks do not draw identical masks.
        self._setup_models()
        seed_everything(int(cfg.train.seed) + self.dist.rank)
        self.engine = build_engine(self.model, cfg, self.dist.world_size, self.dtype, self.device)
        self._setup_data()
        self._resume()
        self.peak = device_peak(self.device, self.dtype, cfg.train.peak_tflops)
        self.tracker = Tracker(
            self.output_dir,
            cfg.train,
            run_name=cfg.experiment_name,
            config=_resolved(cfg),
            start_step=self.step,
            max_steps=int(cfg.train.max_steps),
            enabled=self.dist.is_main,
        )
        self._install_signal_handlers()
        self._announce()

    def _setup_models(self) -> None:
        cfg = self.cfg
        self.text_tokenizer, tokenizer, model = build_models(cfg, self.dtype)
        tokenizer_dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.video_tokenizer = tokenizer.to(self.device, tokenizer_dtype)
        self.model = model.to(self.device)
        # Counted before DeepSpeed wraps the model: under ZeRO-3 parameters are shards after.
        self.flop_model = FlopModel.from_model(
            self.model,
            tokenizer_flops_per_clip(self.video_tokenizer, self.device),
            recompute=bool(cfg.model.llm.gradient_checkpointing),
        )
        self.trainable_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.total_params = sum(p.numel() for p in self.model.parameters())

    def _loader(self, split: str):
        tok = self.video_tokenizer
        extra = {}
        if self.cfg.data.feature_cache:  # the loader checks the cache was made by this tokenizer
            from divot_llm.data.feature_cache import expected_info

            tok_cfg = OmegaConf.to_container(self.cfg.video_tokenizer, resolve=True)
            extra["cache_info"] = expected_info(tok, tok_cfg, self.cfg.data)
        return self._build_loader(
            self.cfg.data,
            self.text_tokenizer,
            tokens_per_clip=tok.num_tokens,
            frames_per_clip=tok.frames_per_clip,
            image_size=tok.input_size,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            split=split,
            **extra,
        )

    def _setup_data(self) -> None:
        self.loader = self._loader("train")
        self.has_val = bool(self.cfg.data.val_sources)

    def _resume(self) -> None:
        path = checkpoint.resolve_resume(str(self.cfg.train.resume), self.output_dir)
        if path is None:
            self.resumed_from = None
        else:
            trainer_state, rank_state = checkpoint.load(
                self.engine, path, self.dist.rank, self.dist.world_size
            )
            self.step = int(trainer_state["step"])
            self.nonfinite_total = int(trainer_state.get("nonfinite_total", 0))
            self._nonfinite_in_row = int(rank_state.get("nonfinite_in_row", 0))
            self.loader.load_state_dict(rank_state["data"])
            self.resumed_from = path
        self._data = iter(self.loader)

    def _announce(self) -> None:
        cfg, t = self.cfg, self.tracker
        t.message(
            f"divot-train: {cfg.experiment_name}, stage {_plain(cfg.stage.name)}, ZeRO-{cfg.deepspeed.zero_stage}, "
            f"{self.dist.world_size} rank(s) on {self.device.type}, {str(self.dtype).replace('torch.', '')}; "
            f"{self.trainable_params / 1e6:.2f} M of {self.total_params / 1e6:.2f} M parameters trainable"
        )
        t.message(f"outputs: {self.output_dir.resolve()}")
        if self.resumed_from is not None:
            t.message(f"resumed from {self.resumed_from} at step {self.step}")
        if self.peak is not None:
            t.message(f"MFU against {self.peak.flops / 1e12:.3g} TFLOP/s per device ({self.peak.source})")

    # ================================================================== signals

    def _install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT ask for a checkpoint at the end of the current step, then a stop.

        Repeats are ignored on purpose: the ``deepspeed`` launcher forwards a signal it
        receives to every rank, which often already got it from the terminal or the
        scheduler, and a second signal must not kill a checkpoint being written.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is None:
            self._stop_signal = signum

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()

    # ================================================================== training

    def train(self) -> str:
        """Train to ``train.max_steps`` (or until a signal).

        Returns:
            ``"finished"``, or ``"interrupted"`` after a signal (a checkpoint was saved).

        Raises:
            NonFiniteLossError: ``train.max_nonfinite_steps`` NaN/inf losses in a row.
        """
        cfg = self.cfg.train
        max_steps = int(cfg.max_steps)
        if cfg.eval_at_start and self.step == 0:
            self.validate()
        self.engine.train()
        window = Window()
        stopping = False
        while self.step < max_steps and not stopping:
            started = time.perf_counter()
            stopping = self.train_step(window)
            window.steps += 1
            window.seconds += time.perf_counter() - started
            self.step += 1
            if self.step % max(1, int(cfg.log_every)) == 0 or self.step == max_steps or stopping:
                self._log(window)
                window = Window()
            if int(cfg.eval_every) > 0 and (self.step % int(cfg.eval_every) == 0 or self.step == max_steps):
                self.validate()
            if (
                stopping
                or self.step == max_steps
                or (int(cfg.save_every) > 0 and self.step % int(cfg.save_every) == 0)
            ):
                self.save()
        if stopping:
            name = signal.Signals(self._stop_signal).name if self._stop_signal else "a signal"
            self.tracker.message(
                f"stopped by {name} after step {self.step}; checkpoint saved. Continue with train.resume=auto"
            )
            return INTERRUPTED
        self.tracker.message(f"finished {self.step} steps; checkpoints in {self.writer.root.resolve()}")
        return FINISHED

    def train_step(self, window: Window) -> bool:
        """One optimizer step (``grad_accum_steps`` finite micro-batches); True if a stop
        was requested on any rank."""
        accum = int(self.cfg.train.grad_accum_steps)
        done = 0
        stop = False
        while done < accum:
            with self._data_guard():
                batch = next(self._data)
            flops, hw_flops = self.flop_model.batch_flops(batch)
            out = self.engine(**self.prepare(batch))
            losses = (
                torch.stack([out.total_loss, out.lm_loss, out.gmm_loss]).detach().float().tolist()
            )  # one sync
            finite = all(math.isfinite(v) for v in losses)
            local = [
                *(losses if finite else [0.0, 0.0, 0.0]),
                float((batch["attention_mask"] != 0).sum()),
                float(batch["input_ids"].shape[0]),
                flops,
                hw_flops,
                0.0 if finite else 1.0,
                1.0 if self._stop_signal is not None else 0.0,
            ]
            total, lm, gmm, tokens, samples, flops, hw_flops, nonfinite, stops = distributed.all_reduce_sum(
                local, self.device
            )
            stop = stop or stops > 0
            if nonfinite > 0:
                self._skip_nonfinite(int(nonfinite))
                continue
            self.engine.backward(out.total_loss)
            window.lr = float(self.engine.get_lr()[0])
            self.engine.step()
            self._nonfinite_in_row = 0
            done += 1
            world = self.dist.world_size
            window.micro += 1
            window.loss, window.lm, window.gmm = (
                window.loss + total / world,
                window.lm + lm / world,
                window.gmm + gmm / world,
            )
            window.tokens, window.samples = window.tokens + tokens, window.samples + samples
            window.flops, window.hw_flops = window.flops + flops, window.hw_flops + hw_flops
        return stop

    def _skip_nonfinite(self, ranks: int) -> None:
        self.nonfinite_total += 1
        self._nonfinite_in_row += 1
        limit = int(self.cfg.train.max_nonfinite_steps)
        self.tracker.message(
            f"step {self.step + 1}: loss is NaN/inf on {ranks} rank(s); micro-batch skipped "
            f"({self._nonfinite_in_row} in a row, limit {limit})"
        )
        if self._nonfinite_in_row >= limit:
            last = checkpoint.latest_checkpoint(self.writer.root)
            raise NonFiniteLossError(
                f"{self._nonfinite_in_row} micro-batches in a row had a NaN/inf loss (train.max_nonfinite_steps="
                f"{limit}) at step {self.step + 1}: training diverged (lower optim.lr, check optim.grad_clip) or the "
                f"data/feature cache holds non-finite values; last checkpoint: {last.path if last else 'none'}"
            )

    @contextlib.contextmanager
    def _data_guard(self):
        """Around anything that pulls from a data loader: stop signals wait (see
        ``stop_signals_deferred``), and the torch RNG comes out as it went in -- starting
        a DataLoader draws its base seed from it, which would shift every later dropout
        mask of a resumed run (whose loader starts at another point) against the
        uninterrupted one."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with stop_signals_deferred(), torch.random.fork_rng(devices=devices):
            yield

    @torch.no_grad()
    def prepare(self, batch: dict) -> dict[str, torch.Tensor]:
        """Loader batch -> model inputs on the device, clips encoded to ``video_feats``.

        Only real clips (``embeds_cmp_mask | embeds_gen_mask``) go through the tokenizer;
        padded clip slots stay zero. A batch from a feature cache brings ``video_feats``.
        """
        keys = MODEL_INPUT_KEYS + CLIP_MASK_KEYS + tuple(k for k in PACKED_KEYS if k in batch)  # packing
        inputs = {k: batch[k].to(self.device, non_blocking=True) for k in keys}
        if "video_feats" in batch:
            inputs["video_feats"] = batch["video_feats"].to(self.device, non_blocking=True)
            return inputs
        frames = batch["frames"]  # (B, C, F, 3, S, S)
        real_bc = batch["embeds_cmp_mask"] | batch["embeds_gen_mask"]
        tok = self.video_tokenizer
        feats = torch.zeros(
            *real_bc.shape, tok.num_tokens, tok.feature_dim, dtype=tok.dtype, device=self.device
        )
        if real_bc.any():
            clips = frames[real_bc].to(self.device, tok.dtype, non_blocking=True)  # (G, F, 3, S, S)
            feats[real_bc.to(self.device)] = tok.encode(clips)
        inputs["video_feats"] = feats
        return inputs

    # ================================================================== logging

    def _log(self, window: Window) -> None:
        """Gather per-rank counters (collective), then log on rank 0."""
        per_rank = distributed.gather_objects((self.loader.skip_counts(), peak_memory_gib(self.device)))
        if not self.dist.is_main or window.micro == 0:
            return
        skips: dict[str, int] = {}
        for counts, _ in per_rank:
            for reason, n in counts.items():
                skips[reason] = skips.get(reason, 0) + n
        seconds = max(window.seconds, 1e-9)
        metrics = {
            "train/loss": window.loss / window.micro,
            "train/lm_loss": window.lm / window.micro,
            "train/gmm_loss": window.gmm / window.micro,
            "train/lr": window.lr,
            "train/nonfinite_skipped": float(self.nonfinite_total),
            "perf/step_time_s": seconds / window.steps,
            "perf/tokens_per_s": window.tokens / seconds,
            "perf/samples_per_s": window.samples / seconds,
            "perf/tflops_per_device": window.flops / seconds / self.dist.world_size / 1e12,
            "perf/peak_mem_gib": max(mem for _, mem in per_rank),
            **{f"data/skipped/{reason}": float(n) for reason, n in sorted(skips.items())},
        }
        grad_norm = self.engine.get_global_grad_norm()
        if grad_norm is not None and math.isfinite(float(grad_norm)):
            metrics["train/grad_norm"] = float(grad_norm)
        if self.peak is not None:
            denominator = seconds * self.dist.world_size * self.peak.flops
            metrics["perf/mfu"] = window.flops / denominator
            metrics["perf/hfu"] = window.hw_flops / denominator
        self.tracker.log(self.step, metrics)
        self.tracker.progress(self.step, _postfix(metrics))
        if not self.cfg.train.progress_bar:
            self.tracker.message(_log_line(self.step, metrics))

    # ================================================================== validation

    def validate(self) -> dict[str, float] | None:
        """Validation metrics over ``data.val_sources`` (collective; logged on rank 0)."""
        if not self.has_val:
            return None
        if self._val_loader is None:
            self._val_loader = self._loader("val")
        with self._data_guard():  # each pass starts new data workers
            metrics = validate(
                self.engine,
                self.model,
                self._val_loader,
                self.prepare,
                int(self.cfg.train.max_eval_batches),
                self.device,
            )
        if metrics is None:
            self.tracker.message(f"step {self.step}: validation skipped: a rank has no validation batch")
            return None
        self.tracker.log(self.step, metrics, kind="val")
        self.tracker.message(
            f"step {self.step} validation: "
            + ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in metrics.items())
        )
        return metrics

    # ================================================================== checkpoints

    def save(self) -> Path:
        """Atomic checkpoint of everything a resume needs (collective)."""
        rank_state = {
            "data": self.loader.state_dict(),
            "nonfinite_in_row": self._nonfinite_in_row,
        }
        trainer_state = {
            "step": self.step,
            "world_size": self.dist.world_size,
            "nonfinite_total": self.nonfinite_total,
            "experiment_name": self.cfg.experiment_name,
        }
        path = self.writer.save(self.engine, self.step, rank_state, trainer_state, self.config_yaml)
        self.tracker.message(f"step {self.step}: checkpoint {path}")
        return path

    # ================================================================== cleanup

    def cleanup(self) -> None:
        """Stop the data workers, close the trackers, restore signal handlers (the process
        group stays: tearing it down is the entry point's last act).

        Runs on every exit path, errors included: closing the stream shuts its workers
        down through the loader's own protocol. Left to interpreter exit, they would be
        SIGTERMed by ``multiprocessing`` -- a signal they do not see (see
        ``stop_signals_deferred``) -- and the exit would wait on them forever.
        """
        data = getattr(self, "_data", None)
        if data is not None and hasattr(data, "close"):
            data.close()
        self._restore_signal_handlers()
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            tracker.close()


def _resolved(cfg: Any) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    return container


def _plain(value: Any) -> str:
    return str(getattr(value, "value", value))


def _postfix(m: dict[str, float]) -> dict[str, str]:
    return {
        "loss": f"{m['train/loss']:.4f}",
        "lm": f"{m['train/lm_loss']:.3f}",
        "gmm": f"{m['train/gmm_loss']:.3f}",
        "lr": f"{m['train/lr']:.2e}",
        "tok/s": f"{m['perf/tokens_per_s']:.0f}",
        "samp/s": f"{m['perf/samples_per_s']:.1f}",
        **({"mfu": f"{m['perf/mfu']:.1%}"} if "perf/mfu" in m else {}),
    }


def _log_line(step: int, m: dict[str, float]) -> str:
    return f"step {step}: " + ", ".join(f"{k} {v}" for k, v in _postfix(m).items())
