"""Training-step benchmark: tokens/s, samples/s, step time, peak memory, MFU.

Times ``Trainer.train_step`` -- the exact step training runs: the frozen video tokenizer
on the batch's clips, forward, backward and the optimizer through the DeepSpeed engine,
plus its bookkeeping -- on a few real batches from the data config (loaded once, so
data loading is not timed: ``tools/bench/data.py`` measures that), single process.

On a CPU it also times, interleaved in the same run, a like-for-like bare step -- a
transformers ``MistralForCausalLM`` of the same shape and dtype on the same tokens, the
LM head only at the supervised positions (as ``DivotLLM``: a baseline with logits at every
position would flatter us), backward, clipping and the same torch AdamW over the same
trainable tensors minus LoRA -- and prints the ratio of our step to it, the framework's
overhead (target <= 1.5x), then where our step's time goes: the video tokenizer alone,
our model without DeepSpeed (a second copy with plain AdamW), our model through the
engine, and the rest. Absolute CPU numbers mean little; MFU there is against a measured
fp32 GEMM, not a hardware peak.

    python tools/bench/train_step.py                         # tiny demo config, CPU
    python tools/bench/train_step.py --steps 20 experiment=pretrain_7b model.llm.path=null \\
        video_tokenizer.pretrained_path=null video_tokenizer.vit_path=null \\
        detokenizer.pretrained_path=null data.root=/datasets  # 7B shapes on a GPU: MFU

Without an existing ``data.root`` a small synthetic set is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from divot_llm.config import DivotConfig, compose_config
from divot_llm.model import build_stage_model
from divot_llm.model.build import enable_recompute
from divot_llm.train import distributed
from divot_llm.train.engine import build_optimizer
from divot_llm.train.fixed_batches import FixedBatches
from divot_llm.train.metrics import peak_memory_gib
from divot_llm.train.trainer import LogAccumulator, Trainer


def data_root(cfg: DivotConfig, workdir: Path) -> str:
    """``data.root`` if it exists, else a small synthetic set written under ``workdir``."""
    if Path(cfg.data.root).is_dir():
        return cfg.data.root
    from divot_llm.data.synthetic import SyntheticCounts, write_synthetic_dataset

    root = workdir / "synthetic"
    print(f"data.root {cfg.data.root} not found: writing a small synthetic set to {root}", file=sys.stderr)
    write_synthetic_dataset(root, seed=0, counts=SyntheticCounts(train_videos=8, val_videos=2, images=8))
    return str(root)


def fetch_batches(cfg: DivotConfig, count: int) -> list[dict]:
    from divot_llm.data.loader import build_loader
    from divot_llm.text import load_text_tokenizer

    vt = cfg.video_tokenizer
    loader = build_loader(
        cfg.data,
        load_text_tokenizer(cfg.model.tokenizer_path),
        vt.num_tokens,
        vt.frames_per_clip,
        vt.input_size,
    )
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == count:
            return batches
    raise RuntimeError("the data config gave fewer batches than asked for")


def time_steps(steps: list, count: int, warmup: int, device: torch.device) -> list[list[float]]:
    """Seconds per call of each function in ``steps``, called in turn (so that a busy
    machine slows all of them alike), after ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(count):
        for step, out in zip(steps, times, strict=True):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            out.append(time.perf_counter() - start)
    return times


def mirrored_trainable(bare: nn.Module, ours: nn.Module) -> None:
    """Train in ``bare`` (a plain Mistral) the tensors ``ours`` (our LoRA-wrapped causal LM)
    trains in its base: embeddings, LM head, the saved norm copies -- not the frozen
    linear weights, which LoRA adapts instead (peft's names mapped back to plain ones)."""
    trains = {}
    for name, p in ours.named_parameters():
        if ".lora_" in name or ".original_module." in name:
            continue
        trains[name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")] = p.requires_grad
    for name, p in bare.named_parameters():
        p.requires_grad_(trains[name])


def optimizer_update(optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
    """Clip (as DeepSpeed's ``gradient_clipping`` does) and step, outside DeepSpeed."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def cycle(items: list):
    """A function returning ``items`` in turn, without end."""
    position = [0]

    def next_item():
        item = items[position[0] % len(items)]
        position[0] += 1
        return item

    return next_item


def bare_mistral_step(trainer: Trainer, batches: list[dict]) -> Callable[[], None]:
    """A like-for-like plain training step: a transformers ``MistralForCausalLM`` of the
    same shape and dtype on the same tokens (clip placeholders stay token embeddings), the
    LM head only at the supervised positions as ``DivotLLM`` does, backward, clip and the
    same torch AdamW (``build_optimizer``) over the same trainable tensors minus LoRA --
    no LoRA, projections, GMM head, video tokenizer or DeepSpeed."""
    from transformers import MistralForCausalLM

    cfg = trainer.cfg
    model = MistralForCausalLM(trainer.model.causal_lm.config).to(trainer.device, trainer.dtype).train()
    enable_recompute(model, cfg.model.llm.checkpoint_every)  # ours recomputes: so does the baseline
    mirrored_trainable(model, trainer.model.causal_lm)
    optimizer = build_optimizer(model, cfg)
    next_batch = cycle(batches)

    def step() -> None:
        for _ in range(cfg.train.grad_accum_steps):
            batch = next_batch()
            labels_bt = batch["labels"][:, 1:].to(trainer.device)
            hidden_bth = model.model(
                input_ids=batch["input_ids"].to(trainer.device),
                attention_mask=(batch["attention_mask"] != 0).long().to(trainer.device),
                use_cache=False,
            ).last_hidden_state
            supervised_bt = labels_bt != -100
            logits_mv = model.lm_head(hidden_bth[:, :-1][supervised_bt]).float()  # (M, V)
            F.cross_entropy(logits_mv, labels_bt[supervised_bt]).backward()
        optimizer_update(optimizer, cfg.optim.grad_clip)

    return step


def plain_divot_step(trainer: Trainer, inputs: list[dict]) -> Callable[[], None]:
    """Our model (a second copy, built as the stage builds it: LoRA, projections, GMM head)
    on the tokenizer's prepared inputs, with the same AdamW and clipping but no DeepSpeed."""
    cfg = trainer.cfg
    model = build_stage_model(
        cfg, trainer.video_tokenizer, init_from=cfg.stage.init_from, dtype=trainer.dtype
    )
    model = model.to(trainer.device).train()
    optimizer = build_optimizer(model, cfg)
    next_inputs = cycle(inputs)

    def step() -> None:
        for _ in range(cfg.train.grad_accum_steps):
            model(**next_inputs()).total_loss.backward()
        optimizer_update(optimizer, cfg.optim.grad_clip)

    return step


def engine_step(trainer: Trainer, inputs: list[dict]) -> Callable[[], None]:
    """Our model through the trainer's DeepSpeed engine (forward, ``engine.backward``,
    ``engine.step``) on the tokenizer's prepared inputs: the train step without the
    tokenizer and the trainer's bookkeeping."""
    engine = trainer.engine
    next_inputs = cycle(inputs)

    def step() -> None:
        for _ in range(trainer.cfg.train.grad_accum_steps):
            engine.backward(engine(**next_inputs()).total_loss)
            engine.step()

    return step


def tokenizer_step(trainer: Trainer, batches: list[dict]) -> Callable[[], None]:
    """The trainer's ``prepare``: the batch to the device and its clips through the
    frozen video tokenizer."""
    next_batch = cycle(batches)

    def step() -> None:
        for _ in range(trainer.cfg.train.grad_accum_steps):
            trainer.prepare(next_batch())

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare baseline and the breakdown")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (default: experiment=demo)")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        overrides = ["experiment=demo", *args.overrides]
        cfg = compose_config(overrides)
        cfg = compose_config([*overrides, f"data.root={data_root(cfg, workdir)}", "data.num_workers=0"])
        cfg.train.output_dir = str(workdir / "run")
        cfg.train.tensorboard = cfg.train.progress_bar = cfg.train.wandb = False
        cfg.train.resume = "none"
        batches = fetch_batches(cfg, args.batches)
        trainer = Trainer(cfg, build_loader=lambda *a, **k: FixedBatches(batches))
        trainer.setup()
        trainer.engine.train()
        logged: list[LogAccumulator] = []

        def ours() -> None:
            logged.append(LogAccumulator())
            trainer.train_step(logged[-1])

        steps = {"ours": ours}
        if trainer.device.type == "cpu" and not args.no_bare:
            inputs = [trainer.prepare(batch) for batch in batches]
            steps |= {
                "tokenizer": tokenizer_step(trainer, batches),
                "engine": engine_step(trainer, inputs),
                "plain": plain_divot_step(trainer, inputs),
                "bare": bare_mistral_step(trainer, batches),
            }
        times = dict(
            zip(steps, time_steps(list(steps.values()), args.steps, args.warmup, trainer.device), strict=True)
        )
        report(trainer, times["ours"], logged[args.warmup :])
        if len(times) > 1:
            report_breakdown(
                trainer, {name: statistics.median(t) * 1e3 for name, t in times.items()}, args.steps
            )
        trainer.cleanup()
    distributed.shutdown_distributed()
    return 0


def report(trainer: Trainer, times: list[float], logged: list[LogAccumulator]) -> None:
    seconds = sum(times)
    tokens, samples = sum(a.tokens for a in logged), sum(a.samples for a in logged)
    flops = sum(a.flops for a in logged)
    print(
        f"device: {trainer.device.type}, {str(trainer.dtype).replace('torch.', '')}, "
        f"ZeRO-{trainer.cfg.deepspeed.zero_stage}, {trainer.trainable_params / 1e6:.2f} M trainable"
    )
    print(f"step time: median {statistics.median(times) * 1e3:.1f} ms over {len(times)} steps")
    print(f"tokens/s: {tokens / seconds:,.0f}   samples/s: {samples / seconds:,.1f}")
    print(
        f"model TFLOP/s: {flops / seconds / 1e12:.4g}   peak memory: {peak_memory_gib(trainer.device):.2f} GiB"
    )
    if trainer.peak is not None:
        print(
            f"MFU: {flops / seconds / trainer.peak.flops:.1%} of {trainer.peak.flops / 1e12:.3g} TFLOP/s ({trainer.peak.source})"
        )
    else:
        print("MFU: unknown peak for this device (set train.peak_tflops)")


def report_breakdown(trainer: Trainer, ms: dict[str, float], steps: int) -> None:
    """The fair ratio, then our step's median split into parts that add up to it: each
    part a measured piece or the difference of two measured steps."""
    ours, bare, tokenizer = ms["ours"], ms["bare"], ms["tokenizer"]
    print(
        f"like-for-like bare step: {bare:.1f} ms (transformers Mistral of the same shape, dtype and tokens, "
        "LM head at the supervised positions, the same AdamW over the same trainable tensors minus LoRA)"
    )
    print(
        f"framework overhead: {ours / bare:.2f}x the like-for-like bare step; "
        f"{(ours - tokenizer) / bare:.2f}x without the video tokenizer"
    )
    parts = [
        ("bare step (like-for-like)", bare),
        ("video tokenizer: frozen encode of the clips", tokenizer),
        ("LoRA, projections, GMM head, masks: our model w/o DeepSpeed - bare", ms["plain"] - bare),
        (f"DeepSpeed ZeRO-{trainer.cfg.deepspeed.zero_stage} engine: engine step - our model w/o it", ms["engine"] - ms["plain"]),
        ("trainer bookkeeping (FLOP count, loss sync, all-reduce): the rest", ours - tokenizer - ms["engine"]),
    ]  # fmt: skip
    width = max(len(name) for name, _ in parts)
    print(f"where our step goes (medians of {steps} steps, interleaved in this run):")
    print(f"  {'part':<{width}}  {'ms':>8}  {'share':>6}")
    for name, value in parts:
        print(f"  {name:<{width}}  {value:8.1f}  {value / ours:6.1%}")
    print(f"  {'total: our train_step':<{width}}  {ours:8.1f}  {1:6.1%}")


if __name__ == "__main__":
    sys.exit(main())
