"""``divot-merge``: fold a trained LoRA into its base model and write a release.

    divot-merge --checkpoint outputs/pretrain --out releases/pretrain --verify
    divot-merge --checkpoint outputs/pretrain-fp32 --out releases/pretrain-bf16 --dtype bf16
    divot-merge --checkpoint run/ --out rel/ --set model.llm.path=/models/Mistral-7B-Instruct-v0.1

--checkpoint takes a run folder, a checkpoints/step_* folder or a ``divot-export
zero-to-fp32`` output. A Video-LaVIT LLM run (stage=lavit_pretrain or lavit_sft) is written
as a release's language_model/ folder instead: the HF model with the LoRA merged and the
text tokenizer, visual_weight.bin (the run's keyframe + motion tokenizers), config.yaml and
release.json -- give --out ROOT/language_model (or ROOT/language_model_sft). The base model is rebuilt from the run's resolved config; --set
changes it (e.g. the base weights moved). The release (llm/, agent/, config.yaml,
release.json) is what ``stage.init_from`` of an SFT stage and ``divot-infer --release``
take. --verify compares the unmerged and the merged model on a few batches and writes
nothing if they differ beyond the dtype's tolerance.

Exit codes: 0 written, 1 no usable checkpoint or the release exists, 2 a bad argument
(a missing path, a release given as --checkpoint, a --set key the schema does not have),
3 verification failed.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="divot-merge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, help="run folder, step folder or zero-to-fp32 output")
    parser.add_argument("--out", required=True, help="release folder to write")
    parser.add_argument(
        "--dtype", choices=("fp32", "bf16"), default="fp32", help="release weights (default fp32)"
    )
    parser.add_argument(
        "--verify", action="store_true", help="check the release reproduces the unmerged model"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="change the run's config before rebuilding (repeatable), e.g. model.llm.path=/new/base",
    )  # fmt: skip
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest llm/ safetensors shard (default 5GB)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing release folder")
    args = parser.parse_args(argv)

    from divot_llm.config import ConfigError
    from divot_llm.config.paths import check_path
    from divot_llm.config.schema import PathKind
    from divot_llm.export import CheckpointError, VerificationError, merge_release
    from divot_llm.export.lavit_release import is_lavit_llm_checkpoint, merge_lavit_llm

    def log(message: str) -> None:
        print(f"divot-merge: {message}", file=sys.stderr)

    try:
        check_path(args.checkpoint, PathKind.checkpoint, "--checkpoint")
        if is_lavit_llm_checkpoint(args.checkpoint):  # a Video-LaVIT LLM: its language_model/ folder
            result = merge_lavit_llm(args.checkpoint, args.out, args.dtype, args.verify, args.overwrite, log)
        else:
            result = merge_release(
                args.checkpoint, args.out, dtype=args.dtype, verify=args.verify, overrides=args.overrides,
                max_shard_size=args.max_shard_size, overwrite=args.overwrite, log=log,
            )  # fmt: skip
    except ConfigError as exc:
        log(str(exc))
        return 2
    except (CheckpointError, FileExistsError, FileNotFoundError) as exc:
        log(str(exc))
        return 1
    except VerificationError as exc:
        log(f"verification FAILED: {exc}")
        return 3
    verified = "verified" if result.info["verified"] else "not verified (pass --verify)"
    print(f"release of stage {result.info['stage']} written to {result.out_dir} ({args.dtype}, {verified})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
