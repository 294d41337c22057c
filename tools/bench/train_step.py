"""Training-step benchmark: tokens/s, samples/s, step time, peak memory, MFU.

Times ``Trainer.train_step`` -- the exact step training runs: the frozen video tokenizer
on the batch's clips, forward, backward and the optimizer through the DeepSpeed engine,
plus its bookkeeping -- on a few real batches from the data config (loaded once, so
data loading is not timed: ``tools/bench/data.py`` measures that), single process.

On a CPU it also times a bare transformers ``MistralForCausalLM`` of the same shape
doing a plain training step on the same tokens -- forward, backward, torch AdamW; no
LoRA, no video tokenizer, no GMM, no DeepSpeed -- and prints the ratio of our step to
it: the framework's overhead (target <= 1.5x). Absolute CPU numbers mean little;
MFU there is against a measured fp32 GEMM, not a hardware peak.

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
from pathlib import Path

import torch

from divot_llm.config import DivotConfig, compose_config
from divot_llm.train import distributed
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


def bare_mistral_step(trainer: Trainer, batches: list[dict], optimizer_step: bool = True):
    """A plain training step of a transformers Mistral of the same shape on the same
    tokens: forward (logits at every position), backward, and (``optimizer_step``) torch
    AdamW over all weights."""
    from transformers import MistralForCausalLM

    config = trainer.model.causal_lm.config
    model = MistralForCausalLM(config).to(trainer.device, trainer.dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    position = [0]

    def step() -> None:
        batch = batches[position[0] % len(batches)]
        position[0] += 1
        out = model(
            input_ids=batch["input_ids"].to(trainer.device),
            attention_mask=(batch["attention_mask"] != 0).long().to(trainer.device),
            labels=batch["labels"].to(trainer.device),
        )
        out.loss.backward()
        if optimizer_step:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batches", type=int, default=4, help="distinct batches, cycled")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-Mistral baseline")
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

        steps = [ours]
        if trainer.device.type == "cpu" and not args.no_bare:
            steps += [
                bare_mistral_step(trainer, batches),
                bare_mistral_step(trainer, batches, optimizer_step=False),
            ]
        times = time_steps(steps, args.steps, args.warmup, trainer.device)
        report(trainer, times[0], logged[args.warmup :])
        if len(times) == 3:
            ours_ms, step_ms, fwd_bwd_ms = (statistics.median(t) * 1e3 for t in times)
            print(
                f"bare transformers Mistral, same tokens: step (fwd + bwd + AdamW) {step_ms:.1f} ms, fwd + bwd {fwd_bwd_ms:.1f} ms"
            )
            print(
                f"framework overhead: {ours_ms / step_ms:.2f}x the bare step (target <= 1.5x); "
                f"{ours_ms / fwd_bwd_ms:.2f}x its forward + backward alone"
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


if __name__ == "__main__":
    sys.exit(main())
