"""The training loop: one readable class, ``setup() -> train() -> cleanup()``.

What a stage trains -- the module, its data, how a batch becomes the engine's inputs,
its losses and validation -- is its ``Stage`` (``train/stages``): the Divot LLM for
pretrain / sft_comp / sft_gen, the de-tokenizer (or tokenizer + de-tokenizer) for detok /
tokenizer / detok_adapt. Everything else is shared by all stages and lives here.

One optimizer step = ``train.grad_accum_steps`` micro-batches on every rank. Each
micro-batch: the stage prepares the loader's batch (e.g. clips through the frozen video
tokenizer, no_grad, bf16 on GPU); the DeepSpeed engine runs forward, backward and -- at
the accumulation boundary -- clip, optimizer and schedule. A stage with more than one
optimizer (stage=vidtok: the autoencoder and its discriminator) declares its other
modules (``Stage.extra_engines``): each gets an engine of its own, built, checkpointed
(``engine_<name>/``), resumed and logged (``train/lr_<name>``) with the main one; the
stage's ``forward`` runs the engines it needs and ``backward_terms`` says which loss each
engine then backpropagates, in order.

Every rank takes part in one small all-reduce per micro-batch *before* backward. It
carries the loss (for logging), the token/sample/FLOP counts, a "loss not finite" flag
and a "stop requested" flag, so all ranks make the same decision at the same point:
skip a micro-batch whose loss is NaN/inf on any rank (no rank enters backward's
collectives alone), and stop for a signal together.

After each optimizer step rank 0 alone updates the weights' moving average
(``stage.ema``, de-tokenizer stages) and, every ``train.sample_every`` steps, writes
sample clips of the stage's prompts (t2v); the other ranks wait at the next step's
all-reduce.
"""

from __future__ import annotations

import contextlib
import logging
import math
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from divot_llm.config import config_to_dict, config_to_yaml, save_resolved_config
from divot_llm.config.loading import ConfigError
from divot_llm.config.schema import DivotConfig
from divot_llm.data.worker_signals import stop_signals_deferred
from divot_llm.launch_guard import StopSignals
from divot_llm.layout import EMA_FILE
from divot_llm.runtime import eval_mode, rng_devices, seed_everything
from divot_llm.train import checkpoint, distributed, failures, run_lock
from divot_llm.train.ema import ModuleEMA
from divot_llm.train.engine import build_engine, resolve_dtype
from divot_llm.train.metrics import device_peak, peak_memory_gib
from divot_llm.train.samples import write_samples
from divot_llm.train.stages import Stage, make_stage, stage_class
from divot_llm.train.stages.base import MAIN_ENGINE, VAL_SEED
from divot_llm.train.tracking import Tracker

FINISHED, INTERRUPTED = "finished", "interrupted"


class NonFiniteLossError(RuntimeError):
    """Too many NaN/inf losses in a row: training diverged or the data is corrupt."""


@dataclass
class LogAccumulator:
    """Sums over the micro-batches since the last log line (all ranks)."""

    micro: int = 0
    losses: dict[str, float] = field(default_factory=dict)  # stage.loss_names, rank means
    counts: dict[str, float] = field(default_factory=dict)  # stage.rate_names, all ranks
    flops: float = 0.0
    hw_flops: float = 0.0
    steps: int = 0
    seconds: float = 0.0
    lr: float = 0.0  # of the last update (read before DeepSpeed steps the schedule)
    extra_lrs: dict[str, float] = field(default_factory=dict)  # the stage's extra engines'

    @property
    def tokens(self) -> float:  # LLM stages (tools/bench reads these two)
        return self.counts.get("tokens", 0.0)

    @property
    def samples(self) -> float:
        return self.counts.get("samples", 0.0)


class Trainer:
    """Trains one stage as ``cfg`` describes.

    Args:
        cfg: The composed run config.
        build_loader: the stage's loader builder -- ``divot_llm.data.loader.build_loader``
            (LLM stages) or ``divot_llm.data.detok_examples.build_detok_loader`` (de-tokenizer
            stages) -- or a function with its signature (tests pass hand-made batches
            through the same interface); None: the stage's own.
    """

    def __init__(self, cfg: DivotConfig, build_loader=None):
        self.cfg = cfg
        self._build_loader = build_loader
        self.step = 0
        self.nonfinite_total = 0
        self._nonfinite_in_row = 0
        # SIGTERM/SIGINT, or the end of launch/*.sh's guard: why this rank asks the others to stop
        self._stop = StopSignals()
        self._val_loader = None

    # ================================================================== setup

    def setup(self) -> None:
        """Process group, output dir claimed (lock, resume choice) before anything is
        written there, resolved config, models, engine, data, resume.

        Raises:
            ConfigError: ``stage.name`` is not a stage (before anything starts).
        """
        cfg = self.cfg
        check_ema_and_sampling(cfg)  # an unknown stage name fails here too, before anything starts
        self.dist = distributed.init_distributed()
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.device = self.dist.device
        self.dtype = resolve_dtype(cfg.deepspeed.precision, self.device)
        self.output_dir = Path(cfg.train.output_dir)
        self._claim_output_dir()
        if self.dist.is_main:
            save_resolved_config(cfg, self.output_dir)
        self.config_yaml = config_to_yaml(cfg)
        self.writer = checkpoint.CheckpointWriter(self.output_dir, self.dist.rank, cfg.train.keep_last)
        self.writer.remove_stale_temp_dirs()

        # Models are built from train.seed on every rank (stage.build), then each rank
        # gets its own stream for dropout so ranks do not draw identical masks.
        self._setup_models()
        # rank 0 writes checkpoints and samples: the only one that needs the average
        self.ema = (
            ModuleEMA(self.model, cfg.stage.ema) if cfg.stage.ema.enabled and self.dist.is_main else None
        )
        seed_everything(cfg.train.seed + self.dist.rank)
        self.engine = build_engine(self.model, cfg, self.dist.world_size, self.dtype, self.device)
        self.extra_engines = {
            name: build_engine(module, cfg, self.dist.world_size, self.dtype, self.device, optim)
            for name, (module, optim) in self.stage.extra_engines().items()
        }
        self.engines = {MAIN_ENGINE: self.engine, **self.extra_engines}
        self._setup_data()
        self._resume()
        self.peak = device_peak(self.device, self.dtype, cfg.train.peak_tflops)
        self.tracker = Tracker(
            self.output_dir,
            cfg.train,
            run_name=cfg.experiment_name,
            config=config_to_dict(cfg),
            start_step=self.step,
            max_steps=cfg.train.max_steps,
            enabled=self.dist.is_main,
        )
        # SIGTERM/SIGINT ask for a checkpoint at the end of the current step, then a stop
        self._stop.install()
        self._announce()

    def _claim_output_dir(self) -> None:
        """Rank 0 takes the output dir's lock (``run_lock``) and chooses the checkpoint to
        resume from (complete, fitting this config and world size); every rank gets the
        outcome, so a refusal stops all of them at once, before any model is built."""
        outcome: Any = None
        if self.dist.is_main:
            try:
                check_output_dir(self.cfg, self.dist.world_size)  # read-only: a refusal changes nothing
                self.run_lock = run_lock.acquire(self.output_dir)
                outcome = choose_checkpoint(self.cfg, self.dist.world_size)  # again, now under the lock
            except Exception as exc:  # shared with the other ranks, raised below
                outcome = exc
                lock = getattr(self, "run_lock", None)
                if lock is not None:
                    lock.release()
        shared = distributed.gather_objects(_picklable(outcome))[0]
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(shared, BaseException):
            raise shared
        self.resume_choice: checkpoint.ResumeChoice = shared

    def _setup_models(self) -> None:
        self.stage: Stage = make_stage(self.cfg, self.device, self.dtype)
        # Counted before DeepSpeed wraps the model: under ZeRO-3 parameters are shards after.
        self.model = self.stage.build()
        self.trainable_params = self.stage.trainable_params
        self.total_params = self.stage.total_params

    @property
    def video_tokenizer(self):
        """The frozen video tokenizer that prepares batches (LLM, detok, detok_adapt stages)."""
        return self.stage.video_tokenizer

    @property
    def text_tokenizer(self):
        return self.stage.text_tokenizer

    def _loader(self, split: str):
        return self.stage.loader(split, self.dist.rank, self.dist.world_size, self._build_loader)

    def _setup_data(self) -> None:
        self.loader = self._loader("train")
        self.has_val = bool(self.cfg.data.val_sources)

    def _resume(self) -> None:
        path = self.resume_choice.path
        if path is None:
            self.resumed_from = None
        else:
            trainer_state, rank_state = checkpoint.load(
                self.engine, path, self.dist.rank, self.dist.world_size, self.extra_engines
            )
            self.step = int(trainer_state["step"])
            self.nonfinite_total = int(trainer_state.get("nonfinite_total", 0))
            self._nonfinite_in_row = int(rank_state.get("nonfinite_in_row", 0))
            self.loader.load_state_dict(rank_state["data"])
            if self.ema is not None:
                self.ema.load(path / EMA_FILE)
            self.resumed_from = path
        self._data = iter(self.loader)

    def _announce(self) -> None:
        cfg, t = self.cfg, self.tracker
        t.message(
            f"divot-train: {cfg.experiment_name}, stage {cfg.stage.name}, ZeRO-{cfg.deepspeed.zero_stage}, "
            f"{self.dist.world_size} rank(s) on {self.device.type}, {str(self.dtype).replace('torch.', '')}; "
            f"{self.trainable_params / 1e6:.2f} M of {self.total_params / 1e6:.2f} M parameters trainable"
        )
        t.message(f"outputs: {self.output_dir.resolve()}")
        lock = getattr(self, "run_lock", None)
        if lock is not None and lock.took_over is not None:
            t.message(f"took over the lock {lock.path} of {lock.took_over.describe()}: that process is gone")
        for note in self.resume_choice.notes:
            t.message(note)
        if self.resumed_from is not None:
            t.message(f"resumed from {self.resumed_from} at step {self.step}")
        if self.peak is not None:
            t.message(f"MFU against {self.peak.flops / 1e12:.3g} TFLOP/s per device ({self.peak.source})")

    # ================================================================== training

    def train(self) -> str:
        """Train to ``train.max_steps`` (or until a signal).

        Returns:
            ``"finished"``, or ``"interrupted"`` after a signal (a checkpoint was saved).

        Raises:
            NonFiniteLossError: ``train.max_nonfinite_steps`` NaN/inf losses in a row.
        """
        cfg = self.cfg.train
        max_steps = cfg.max_steps
        if cfg.eval_at_start and self.step == 0:
            self.validate()
        for engine in self.engines.values():
            engine.train()
        logged = LogAccumulator()
        stopping = False
        while self.step < max_steps and not stopping:
            started = time.perf_counter()
            stopping = self.train_step(logged)
            logged.steps += 1
            logged.seconds += time.perf_counter() - started
            self.step += 1
            if self.ema is not None:  # once per optimizer step, after all its micro-batches
                self.ema.update(self.step, self.stage.module)
            if self.step % cfg.log_every == 0 or self.step == max_steps or stopping:
                self._log(logged)
                logged = LogAccumulator()
            if cfg.eval_every > 0 and (self.step % cfg.eval_every == 0 or self.step == max_steps):
                self.validate()
            if cfg.sample_every > 0 and self.step % cfg.sample_every == 0 and not stopping:
                self.write_samples()  # (not on the way out after a signal: the checkpoint comes first)
            if stopping or self.step == max_steps or (cfg.save_every > 0 and self.step % cfg.save_every == 0):
                self.save()
        if stopping:
            # Every rank is here (the stop was decided on a shared all-reduce). Name what a
            # rank was stopped by: a signal sent to all of them can reach rank 0 after
            # another rank already asked for the stop.
            causes = [c for c in distributed.gather_objects(self._stop.cause) if c is not None]
            cause = self._stop.cause or (causes[0] if causes else "a stop request on another rank")
            self.tracker.message(
                f"stopped by {cause} after step {self.step}; checkpoint saved. Continue with train.resume=auto"
            )
            return INTERRUPTED
        self.tracker.message(f"finished {self.step} steps; checkpoints in {self.writer.root.resolve()}")
        return FINISHED

    def train_step(self, logged: LogAccumulator) -> bool:
        """One optimizer step (``grad_accum_steps`` finite micro-batches), added to
        ``logged``; True if a stop was requested on any rank."""
        accum = self.cfg.train.grad_accum_steps
        stage = self.stage
        done = 0
        stop = False
        while done < accum:
            with self._data_guard():
                batch = next(self._data)
            flops, hw_flops, counts = stage.step_counts(batch)
            terms = stage.forward(self.engines, self.prepare(batch), self.step)
            losses = torch.stack(terms).detach().float().tolist()  # one sync
            finite = all(math.isfinite(v) for v in losses)
            local = [
                *(losses if finite else [0.0] * len(losses)),
                *counts.values(),
                flops,
                hw_flops,
                0.0 if finite else 1.0,
                1.0 if self._stop.requested() else 0.0,
            ]
            summed = distributed.all_reduce_sum(local, self.device)
            n, k = len(losses), len(counts)
            loss_sums, count_sums = summed[:n], summed[n : n + k]
            flops, hw_flops, nonfinite, stops = summed[n + k :]
            stop = stop or stops > 0
            if nonfinite > 0:
                self._skip_nonfinite(int(nonfinite))
                continue
            for name, index in stage.backward_terms(self.step).items():
                engine = self.engines[name]
                engine.backward(terms[index])
                lr = float(engine.get_lr()[0])
                if name == MAIN_ENGINE:
                    logged.lr = lr
                else:
                    logged.extra_lrs[name] = lr
                engine.step()
            self._nonfinite_in_row = 0
            done += 1
            world = self.dist.world_size
            logged.micro += 1
            for name, value in zip(stage.loss_names, loss_sums, strict=True):
                logged.losses[name] = logged.losses.get(name, 0.0) + value / world
            for name, value in zip(counts, count_sums, strict=True):
                logged.counts[name] = logged.counts.get(name, 0.0) + value
            logged.flops, logged.hw_flops = logged.flops + flops, logged.hw_flops + hw_flops
        return stop

    def _skip_nonfinite(self, ranks: int) -> None:
        self.nonfinite_total += 1
        self._nonfinite_in_row += 1
        limit = self.cfg.train.max_nonfinite_steps
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
        with stop_signals_deferred(), torch.random.fork_rng(devices=rng_devices(self.device)):
            yield

    def prepare(self, batch: dict) -> dict[str, Any]:
        """Loader batch -> engine inputs on the device (the stage's ``prepare``: e.g. LLM
        clips encoded to ``video_feats``, de-tokenizer windows + conditioning features)."""
        return self.stage.prepare(batch)

    # ================================================================== logging

    def _log(self, logged: LogAccumulator) -> None:
        """Gather per-rank counters (collective), then log on rank 0."""
        per_rank = distributed.gather_objects((self.loader.skip_counts(), peak_memory_gib(self.device)))
        if not self.dist.is_main or logged.micro == 0:
            return
        skips: dict[str, int] = {}
        for counts, _ in per_rank:
            for reason, n in counts.items():
                skips[reason] = skips.get(reason, 0) + n
        seconds = max(logged.seconds, 1e-9)
        metrics = {
            **{f"train/{name}": value / logged.micro for name, value in logged.losses.items()},
            "train/lr": logged.lr,
            **{f"train/lr_{name}": lr for name, lr in logged.extra_lrs.items()},
            "train/nonfinite_skipped": float(self.nonfinite_total),
            "perf/step_time_s": seconds / logged.steps,
            **{f"perf/{name}_per_s": value / seconds for name, value in logged.counts.items()},
            "perf/tflops_per_device": logged.flops / seconds / self.dist.world_size / 1e12,
            "perf/peak_mem_gib": max(mem for _, mem in per_rank),
            **{f"data/skipped/{reason}": float(n) for reason, n in sorted(skips.items())},
        }
        for name, engine in self.engines.items():
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None and math.isfinite(float(grad_norm)):
                metrics["train/grad_norm" + ("" if name == MAIN_ENGINE else f"_{name}")] = float(grad_norm)
        if self.peak is not None:
            denominator = seconds * self.dist.world_size * self.peak.flops
            metrics["perf/mfu"] = logged.flops / denominator
            metrics["perf/hfu"] = logged.hw_flops / denominator
        self.tracker.log(self.step, metrics)
        postfix = _postfix(metrics, self.stage.loss_names, self.stage.rate_names)
        self.tracker.progress(self.step, postfix)
        if not self.cfg.train.progress_bar:
            self.tracker.message(f"step {self.step}: " + ", ".join(f"{k} {v}" for k, v in postfix.items()))

    # ================================================================== validation

    def validate(self) -> dict[str, float] | None:
        """Validation metrics over ``data.val_sources`` (collective; logged on rank 0)."""
        if not self.has_val:
            return None
        if self._val_loader is None:
            self._val_loader = self._loader("val")
        with self._data_guard():  # each pass starts new data workers
            metrics = self.stage.validate(self.engine, self._val_loader, self.cfg.train.max_eval_batches)
        if metrics is None:
            self.tracker.message(f"step {self.step}: validation skipped: a rank has no validation batch")
            return None
        self.tracker.log(self.step, metrics, kind="val")
        for tag, image in self.stage.validation_images().items():
            self.tracker.image(self.step, tag, image)
        self.tracker.message(
            f"step {self.step} validation: "
            + ", ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in metrics.items())
        )
        return metrics

    # ================================================================== samples

    def write_samples(self) -> Path | None:
        """Rank 0: one clip per ``train.sample_every`` prompt from the EMA weights (the
        trained ones without an EMA), as gifs + a grid in the run folder and TensorBoard.
        The clips' draws come from a fixed seed (comparable across steps) and the global
        RNG comes out as it went in, so sampling changes nothing in training."""
        if not self.dist.is_main:
            return None
        cfg = self.cfg.train
        module = self.ema.module if self.ema is not None else self.stage.module
        with torch.random.fork_rng(devices=rng_devices(self.device)), eval_mode(module):
            clips = self.stage.sample_clips(module, list(cfg.sample_prompts), cfg.sample_steps, VAL_SEED)
        folder, grid = write_samples(self.output_dir, self.step, list(cfg.sample_prompts), clips, module.fps)
        self.tracker.image(self.step, "samples/grid", grid)
        self.tracker.message(f"step {self.step}: {len(clips)} samples in {folder}")
        return folder

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
            **({checkpoint.EXTRA_ENGINES: sorted(self.extra_engines)} if self.extra_engines else {}),
        }
        try:
            ema = {EMA_FILE: self.ema.state_dict()} if self.ema is not None else None
            path = self.writer.save(
                self.engine, self.step, rank_state, trainer_state, self.config_yaml, ema, self.extra_engines
            )
        except (OSError, RuntimeError) as exc:  # a full disk, or another write error
            partial = self.writer.root / f"{checkpoint.TMP_PREFIX}{checkpoint.step_dir_name(self.step)}"
            kept = checkpoint.latest_checkpoint(self.writer.root)
            failure = failures.checkpoint_write_failure(exc, partial, kept.path if kept else None)
            if failure is None:
                raise
            raise failure from exc
        self.tracker.message(f"step {self.step}: checkpoint {path}")
        return path

    # ================================================================== cleanup

    def cleanup(self) -> None:
        """Stop the data workers, close the trackers, restore signal handlers (the process
        group stays: tearing it down is the entry point's last act).

        Runs on every exit path, errors included: closing the stream shuts its workers
        down through the loader's own protocol. Whatever is left ends anyway: a worker
        obeys its rank's SIGTERM (torch's and ``multiprocessing``'s exit-time clean-up) and
        dies with its rank (``divot_llm.data.worker_signals``).
        """
        data = getattr(self, "_data", None)
        if data is not None and hasattr(data, "close"):
            data.close()
        self._stop.restore()
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            tracker.close()
        lock = getattr(self, "run_lock", None)  # last: the folder is free once all is written
        if lock is not None:
            lock.release()


def check_output_dir(
    cfg: DivotConfig, world_size: int | None = None, lock: bool = True
) -> checkpoint.ResumeChoice:
    """The start-up checks of ``train.output_dir``, read-only (``divot-train`` runs them
    before Hydra writes ``.hydra/`` there): no live run holds its lock (when ``lock``:
    rank 0 only, the other ranks would find their own rank 0 holding it), and the
    checkpoint ``train.resume`` asks for exists, is complete and fits this config (and
    world size).

    Raises:
        run_lock.RunLockedError, checkpoint.CheckpointError, FileExistsError: refused,
            with what to do.
    """
    if lock:
        run_lock.check_free(cfg.train.output_dir)
    return choose_checkpoint(cfg, world_size)


def check_ema_and_sampling(cfg: DivotConfig) -> None:
    """``stage.ema`` and ``train.sample_every`` need a stage that has them and full
    parameters on rank 0 (it averages and samples alone).

    Raises:
        ConfigError: an unknown stage; an EMA on a stage that trains no de-tokenizer;
            sampling on a stage that does not generate from prompts; either under ZeRO-3.
    """
    stage = stage_class(cfg.stage.name)
    ema, sample_every = cfg.stage.ema.enabled, cfg.train.sample_every
    if ema and not stage.trains_detokenizer:
        raise ConfigError(
            f"stage.ema.enabled: stage {cfg.stage.name} trains no de-tokenizer; EMA is for those"
        )
    if sample_every and not stage.samples_prompts:
        raise ConfigError(
            f"train.sample_every={sample_every}: stage {cfg.stage.name} does not generate clips from prompts "
            "(stage=t2v does); set train.sample_every=0"
        )
    if cfg.deepspeed.zero_stage == 3 and (ema or sample_every):
        wanted = " and ".join(
            k
            for k, on in (("stage.ema.enabled", ema), (f"train.sample_every={sample_every}", sample_every))
            if on
        )
        raise ConfigError(
            f"{wanted} {'need' if ema and sample_every else 'needs'} the full weights on rank 0, which ZeRO-3 partitions across ranks: use "
            "deepspeed=zero2 (a de-tokenizer fits on one device), or turn them off"
        )


def choose_checkpoint(cfg: DivotConfig, world_size: int | None = None) -> checkpoint.ResumeChoice:
    """The checkpoint ``train.resume`` names (``checkpoint.choose_resume``), checked to fit
    ``cfg`` (and ``world_size`` ranks, when given)."""
    choice = checkpoint.choose_resume(cfg.train.resume, cfg.train.output_dir)
    if choice.path is not None:
        current = yaml.safe_load(config_to_yaml(cfg))  # as the checkpoint's config.yaml reads
        checkpoint.check_fits(choice.path, current, world_size)
    return choice


def _picklable(outcome: Any) -> Any:
    """``outcome`` as it can travel to the other ranks (an exception that does not pickle
    becomes a RuntimeError with its message)."""
    try:
        pickle.dumps(outcome)
    except Exception:  # any pickling failure
        return RuntimeError(f"{type(outcome).__name__}: {outcome}")
    return outcome


def _postfix(m: dict[str, float], loss_names: tuple[str, ...], rate_names: dict[str, str]) -> dict[str, str]:
    """Short progress readouts: losses (``lm_loss`` -> ``lm``), lr, rates, MFU."""
    return {
        **{name.removesuffix("_loss"): f"{m[f'train/{name}']:.4f}" for name in loss_names},
        "lr": f"{m['train/lr']:.2e}",
        **{label: f"{m[f'perf/{name}_per_s']:.1f}" for name, label in rate_names.items()},
        **({"mfu": f"{m['perf/mfu']:.1%}"} if "perf/mfu" in m else {}),
    }
