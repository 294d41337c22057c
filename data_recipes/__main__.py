"""``divot-data``: one command, one sub-command per recipe."""

from __future__ import annotations

import argparse
import atexit
import gc
import sys

from data_recipes import (
    cc3m,
    features,
    inspect_shards,
    latent_stats,
    motion,
    motion_cache,
    synthetic,
    videollava,
    webvid,
)

RECIPES = {
    "synthetic": synthetic,
    "webvid": webvid,
    "videollava": videollava,
    "cc3m": cc3m,
    "inspect": inspect_shards,
    "features": features,
    "latent-stats": latent_stats,
    "motion": motion,
    "motion-cache": motion_cache,
}


def main(argv: list[str] | None = None) -> int:
    # At exit the interpreter's last garbage collections would walk every object torch and
    # the tokenizers made, for nothing: seconds per process (as divot_llm.cli.train does).
    atexit.register(gc.freeze)
    parser = argparse.ArgumentParser(prog="divot-data", description="Build and check divot-llm datasets.")
    # `deepspeed` without --no_local_rank passes --local_rank=N before the recipe's name; the
    # rank reads LOCAL_RANK, which it sets too (data_recipes.ranks)
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    subparsers = parser.add_subparsers(dest="recipe", required=True)
    for name, module in RECIPES.items():
        sub = subparsers.add_parser(
            name,
            help=module.__doc__.strip().splitlines()[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the docstring's layout
        )
        module.add_arguments(sub)
    args = parser.parse_args(argv)
    return RECIPES[args.recipe].run(args)


if __name__ == "__main__":
    sys.exit(main())
