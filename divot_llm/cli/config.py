"""``divot-config``: compose, validate and print (or save) a run's resolved config.

    divot-config experiment=pretrain_7b data.root=/data model.llm.path=/ckpt/mistral ...

Checks what a launch would check at start-up -- unknown keys (``+key=`` too), wrong types,
values out of range, values still ``???`` and, with ``--check-paths``, the local paths the
stage reads -- without starting anything, so a typo costs seconds rather than a queued job.
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from divot_llm.config import ConfigError, missing_keys, save_resolved_config, to_typed
from divot_llm.config.loading import compose_dictconfig, describe_config_error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="divot-config", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=demo optim.lr=3e-4")
    parser.add_argument("--save", metavar="DIR", help="also write DIR/config.yaml (fully resolved)")
    parser.add_argument(
        "--check-paths", action="store_true",
        help="also check that every local path the stage reads exists here (as divot-train does)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    from hydra.errors import HydraException

    try:
        node = compose_dictconfig(args.overrides)  # printed as composed when values are missing
        missing = missing_keys(node)
        print(OmegaConf.to_yaml(node, resolve=not missing), end="")
        if missing:
            print("error: these values must be set: " + ", ".join(missing), file=sys.stderr)
            return 1
        cfg = to_typed(node)
        if args.check_paths:
            from divot_llm.config.paths import check_config_paths
            from divot_llm.train.stages import training_reads

            check_config_paths(cfg, training_reads(cfg))
        if args.save:
            print(f"resolved config written to {save_resolved_config(cfg, args.save)}", file=sys.stderr)
    except (HydraException, OmegaConfBaseException, ConfigError) as exc:
        print(f"config error: {describe_config_error(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
