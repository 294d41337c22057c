"""Peak memory of ``divot-export zero-to-fp32`` relative to the size it exports.

Saves a ZeRO-2 checkpoint of the demo model widened to ``--hidden`` (its trainable
embeddings and LM head make the export large next to the interpreter: 1024 -> ~260 MiB),
from one in-process CPU rank, then exports it in a fresh child process per converter and
reads the child's resident set after its imports (the baseline) and its peak during the
export. It prints the export's size on disk and (peak - baseline) / size for

    deepspeed   DeepSpeed's converter (``deepspeed.utils.zero_to_fp32``): concatenates
                every rank's fp32 partition first, then writes shard by shard
    streaming   ours for ZeRO-1/2 (``divot_llm.export.zero``): copies each parameter's
                slice straight from the ranks' memory-mapped partitions into the output
                file, re-mapping them every ``STREAM_CHUNK_BYTES``

and checks both wrote the same tensors. The peak is the child's ``VmHWM`` (Linux), reset
after its imports; the resident set counts mapped file pages too (clean page cache, which
the kernel could reclaim), as a job's memory limit may.

    python tools/bench/export.py [--hidden 1024] [--checkpoint CKPT] [--max-shard-size 5GB]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import torch

from divot_llm.config import compose_config
from divot_llm.export import read_fp32_export
from divot_llm.train import distributed
from divot_llm.train.fixed_batches import FixedBatches
from divot_llm.train.trainer import Trainer

# Run in the child: imports first, then the peak resident set is reset to the current one
# (the baseline) and one export runs; prints the baseline and the peak after, in KiB. Read
# from /proc: ``ru_maxrss`` would carry the parent's peak over into the child.
CHILD = textwrap.dedent(
    """
    import re, sys
    from divot_llm.export import zero_to_fp32
    import deepspeed.utils.zero_to_fp32, safetensors.torch, huggingface_hub

    def kib(field):
        with open("/proc/self/status") as f:
            return int(re.search(field + r":\\s+(\\d+) kB", f.read()).group(1))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current resident set
    before = kib("VmRSS")
    zero_to_fp32(sys.argv[1], sys.argv[2], max_shard_size=sys.argv[3], streaming=sys.argv[4] == "streaming")
    print(before, kib("VmHWM"))
    """
)
CONVERTERS = ("deepspeed", "streaming")


def save_checkpoint(out: Path, hidden: int) -> Path:
    """A ZeRO-2 checkpoint (step 0: the fp32 partitions exist from the start) of the
    demo model with hidden size ``hidden``, from one in-process CPU rank."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    heads = max(1, hidden // 64)
    cfg = compose_config([
        "experiment=demo", f"data.root={out}", f"train.output_dir={out / 'run'}", "train.resume=none",
        f"model.llm.hidden_size={hidden}", f"model.llm.intermediate_size={hidden}",
        f"model.llm.num_attention_heads={heads}", f"model.llm.num_key_value_heads={heads}",
        "train.tensorboard=false", "train.progress_bar=false", "train.wandb=false",
    ])  # fmt: skip
    trainer = Trainer(cfg, build_loader=lambda *a, **k: FixedBatches([]))
    try:
        trainer.setup()
        return trainer.save()
    finally:
        trainer.cleanup()
        distributed.shutdown_distributed()


def measure(checkpoint: Path, out: Path, converter: str, max_shard_size: str) -> tuple[int, int]:
    """(baseline, peak) resident set of a child process exporting ``checkpoint``, bytes."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(checkpoint), str(out), max_shard_size, converter],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    before_kib, after_kib = map(int, proc.stdout.split()[-2:])
    return before_kib * 1024, after_kib * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024, help="hidden size of the widened demo model")
    parser.add_argument("--checkpoint", help="export this checkpoint instead of a new one")
    parser.add_argument("--max-shard-size", default="5GB", help="as divot-export's option")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        checkpoint = Path(args.checkpoint) if args.checkpoint else save_checkpoint(work, args.hidden)
        results = {}
        for converter in CONVERTERS:
            out = work / converter
            results[converter] = measure(checkpoint, out, converter, args.max_shard_size)
        size = sum(f.stat().st_size for f in (work / CONVERTERS[0]).glob("*.safetensors"))
        print(
            f"checkpoint: {checkpoint}; export: {size / 2**20:.1f} MiB fp32 (max shard {args.max_shard_size})"
        )
        print(f"  {'converter':<10} {'baseline MiB':>12} {'peak MiB':>9} {'(peak - baseline) / export':>27}")
        for converter, (before, after) in results.items():
            print(
                f"  {converter:<10} {before / 2**20:12.0f} {after / 2**20:9.0f} {(after - before) / size:26.2f}x"
            )
        first, second = (read_fp32_export(work / c) for c in CONVERTERS)
        same = sorted(first) == sorted(second) and all(torch.equal(first[k], second[k]) for k in first)
        print(f"same tensors from both converters: {'yes' if same else 'NO'}")
        return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
