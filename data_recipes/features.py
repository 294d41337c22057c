"""Precompute video-tokenizer features for a config's data (the feature cache).

    divot-data features --out data/cache/demo -- experiment=demo data.root=data/synthetic

Runs the frozen video tokenizer once over every train and validation sample (the clips
the loader samples in epoch 0) and writes one safetensors file per sample, in the encode
dtype (bf16 on a GPU), then index.json, which marks the cache finished. Train with
``data.feature_cache=<out>`` to skip decoding and the tokenizer (the run then builds no
ViT). SIGTERM/Ctrl-C stop it between batches; re-running resumes.

On many GPUs and nodes, run it under a launcher (launch/features.sh, torchrun, deepspeed):
each rank encodes its share of every source on its own GPU, and rank 0 writes the index
once all are done:

    GPUS_PER_NODE=8 launch/features.sh --out /cache/pretrain_7b -- experiment=pretrain_7b data.root=/datasets

Without a launcher, ``--shard I/N --device cuda:I`` builds one share; the last of N such
commands to finish writes the index. ``--upload CMD`` then copies the cache to object
storage (docs/data.md: "Building it on many GPUs and nodes").
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from data_recipes.ranks import Launch, RankJob
from divot_llm.config import compose_config
from divot_llm.config.schema import DivotConfig
from divot_llm.data.cache_build import build_feature_cache, feature_specs, finish_feature_cache
from divot_llm.data.feature_cache import (
    INDEX_FILE,
    BuildPart,
    CacheInfo,
    expected_info,
    finished_parts,
    part_file,
)
from divot_llm.data.shard_transport import fill_command
from divot_llm.runtime import default_dtype, seed_everything
from divot_llm.tokenizers import build_video_tokenizer

PROGRAM = "divot-data features"
UPLOAD_DIR = "{dir}"  # what --upload's template names the cache folder by
UPLOAD_POLL_S = 1.0  # how often a running upload looks for a stop signal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="cache folder")
    add_encoding_arguments(parser)
    add_shard_argument(parser)
    parser.add_argument(
        "--upload",
        metavar="CMD",
        help="once the index is written, run CMD to copy the cache elsewhere, e.g. "
        "'aws s3 sync {dir} s3://bucket/cache' ({dir}: the cache folder; split as a shell "
        "would, run without one). Under a launcher: rank 0, and the first rank of every "
        "node whose --out is a disk of its own",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, after --, e.g. experiment=demo")


def add_shard_argument(parser: argparse.ArgumentParser) -> None:
    """``--shard I/N`` of the recipes that fill a cache (``Launch.shard`` resolves it)."""
    parser.add_argument(
        "--shard",
        type=_shard,
        default=None,
        metavar="I/N",
        help="build only the I-th of N shares of every source (0-based): run N at once, one per GPU "
        "(--device cuda:I), into the same --out (default: everything; under a launcher, each "
        "rank's own share)",
    )


def add_encoding_arguments(parser: argparse.ArgumentParser) -> None:
    """``--batch-clips``, ``--workers``, ``--device`` and ``--dtype`` of the recipes that run
    the video tokenizer over a dataset's clips."""
    parser.add_argument("--batch-clips", type=int, default=32, help="clips per tokenizer forward")
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        help="processes decoding videos while this one encodes (default: the cores per rank - 1, "
        "at most 8; 0 decodes in this process)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if available; under a launcher cuda:LOCAL_RANK), cpu, cuda, cuda:1 ...",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="auto: bf16 on GPU, fp32 on CPU (as training)",
    )


def default_workers() -> int:
    """Decoding processes per rank: the cores a rank has (its node's shared among the
    ranks the launcher started there), minus its own, at most 8."""
    ranks_here = max(1, Launch.from_env().local_world_size)
    return max(0, min(8, (os.cpu_count() or 1) // ranks_here - 1))


def device_and_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """What ``--device`` / ``--dtype`` ask for (``Launch.device``); a GPU named by index
    becomes the current one (CUDA's context and handles then stay off the node's other
    GPUs, which other ranks use)."""
    device = Launch.from_env().device(args.device)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device, {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype) or default_dtype(device)


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, e.g. 3/8; got {text!r}")
    return int(index), int(count)


def upload_argv(template: str, cache_dir: str | os.PathLike) -> list[str]:
    """``--upload``'s command for ``cache_dir``: split as a shell would, ``{dir}`` then
    replaced inside each argument (a path with spaces stays one argument); nothing is
    evaluated, no shell runs it.

    Raises:
        ValueError: no ``{dir}`` in it, or its program is not found (said before the build).
    """
    argv = fill_command(template, UPLOAD_DIR, str(Path(cache_dir).resolve()), what="the cache folder")
    if shutil.which(argv[0]) is None:
        raise ValueError(f"--upload: program {argv[0]!r} not found")
    return argv


def run(args: argparse.Namespace) -> int:
    launch = Launch.from_env()
    out = Path(args.out)
    try:
        shard = launch.shard(args.shard)
        upload = upload_argv(args.upload, args.out) if args.upload else None
        job = RankJob(launch, out, PROGRAM)  # (DIVOT_RANK_SILENCE_S is checked here)
    except ValueError as exc:
        return launch.refuse(PROGRAM, str(exc))
    with job:
        return job.run(lambda: _build(args, out, shard, job, upload))


def _build(
    args: argparse.Namespace, out: Path, shard: tuple[int, int], job: RankJob, upload: list[str] | None
) -> int:
    """This rank's share, then the end of the build: the index (rank 0 under a launcher,
    else whoever finds every share's part) and the upload."""
    cfg, tokenizer, info = _encoder(args)
    launch = job.launch
    with tqdm(desc="features", unit="sample", disable=launch.rank != 0) as bar:
        counts = build_feature_cache(cfg.data, tokenizer, info, out, batch_clips=args.batch_clips,
                                     progress=bar.update, workers=args.workers, shard=shard,
                                     stop=job.stop_requested, finish=False)  # fmt: skip
    if not job.wait_for_all():
        return job.stopped(f"{_counts(counts)} on rank {launch.rank}")
    parts = _every_part(job, out, shard)
    specs = feature_specs(cfg.data, tokenizer.frames_per_clip, info)
    index = finish_feature_cache(out, specs, parts) if parts else None
    job.finish()
    if index is not None:
        total = sum((Counter(part.counts) for part in parts), Counter())
        print(f"feature cache {out}: {_counts(total)} ({len(parts)} share(s))")
        print(f"{out / INDEX_FILE}: {index['samples']} samples of {len(index['groups'])} sources")
        print(f"train with: data.feature_cache={out}")
    elif not launch.launched:
        print(f"feature cache {out}, share {shard[0]}/{shard[1]}: {_counts(counts)}")
        print(f"the last of the {shard[1]} shares to finish writes {out / INDEX_FILE}")
    if upload is not None and _uploads_here(launch, out, index is not None):
        return _upload(upload, job)
    return 0


def _encoder(args: argparse.Namespace) -> tuple[DivotConfig, torch.nn.Module, CacheInfo]:
    """The config, its video tokenizer on ``--device`` in ``--dtype``, and the cache info
    that names them."""
    cfg = compose_config(args.overrides)
    device, dtype = device_and_dtype(args)
    # Seeded as the trainer builds it (build_models): a random-init tokenizer (tiny configs)
    # must be the very one the run will use, or the cache's fingerprint will not match it.
    seed_everything(cfg.train.seed)
    tokenizer = build_video_tokenizer(cfg.video_tokenizer).to(device, dtype)
    return cfg, tokenizer, expected_info(tokenizer, dataclasses.asdict(cfg.video_tokenizer), cfg.data)


def _every_part(job: RankJob, out: Path, shard: tuple[int, int]) -> list[BuildPart] | None:
    """Every share's part where the index is to be written, else None: under a launcher
    rank 0 gets them over the process group (nodes may have disks of their own); alone,
    they are in ``out`` once every share is done."""
    if job.launch.launched:
        return job.gather(BuildPart.read(part_file(out, *shard)))
    return finished_parts(out, shard[1])


def _uploads_here(launch: Launch, out: Path, wrote_index: bool) -> bool:
    """Whether this process runs ``--upload``: the one that wrote the index, and under a
    launcher the first rank of every node whose ``out`` does not show rank 0's index --
    a disk of its own, holding its ranks' samples only (on a shared file system rank 0
    alone uploads the whole cache)."""
    if wrote_index:
        return True
    return launch.launched and launch.local_rank == 0 and not (out / INDEX_FILE).is_file()


def _counts(counts: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing read"


def _upload(argv: list[str], job: RankJob) -> int:
    """Run the upload command; a stop signal (or the launcher's end) stops it too: it may
    run for hours, and this rank's signal handlers would otherwise only note the signal."""
    print("uploading: " + shlex.join(argv), flush=True)
    with subprocess.Popen(argv) as proc:
        while True:
            try:
                code = proc.wait(timeout=UPLOAD_POLL_S)
                break
            except subprocess.TimeoutExpired:
                if job.stop_requested():
                    proc.terminate()
                    proc.wait()
                    return job.stopped("the upload was stopped; the cache is complete here")
    if code != 0:
        print(f"{PROGRAM}: error: the upload command exited with {code}; the cache is complete here, "
              "run the same command again to upload it (nothing is encoded again)", file=sys.stderr)  # fmt: skip
        return 1
    return 0
