"""``divot-train``: the Hydra app that trains one stage (pretrain, sft_comp, sft_gen, detok,
tokenizer, detok_adapt).

    divot-train experiment=demo data.root=data/synthetic                     # one process
    torchrun --nproc_per_node 8 -m divot_llm.train experiment=pretrain_7b ...
    deepspeed --no_local_rank --num_gpus 8 --module divot_llm.train experiment=pretrain_7b ...
    divot-train experiment=pretrain_7b ... plan=true                          # memory plan only

The ``deepspeed`` launcher needs ``--no_local_rank``: Hydra rejects the ``--local_rank``
argument it would append (ranks read ``LOCAL_RANK`` from the environment instead).

Start-up order: compose (unknown keys and wrong types fail here, naming the key), check
that no value is still ``???``, then either print the plan or train.

Exit codes: 0 done; 1 training error -- any exception on any rank, data-loader workers
included, ends every rank within seconds, one paragraph on stderr says what failed and
the full traceback is in ``<train.output_dir>/train.log`` (``divot_llm.train.failures``);
2 config error; 143 stopped by SIGTERM/SIGINT after saving a checkpoint (resume with
``train.resume=auto``; non-zero so that a script chaining stages does not go on). A
signal during start-up, before training begins, ends the ranks at once: nothing to save.
"""

from __future__ import annotations

import atexit
import faulthandler
import gc
import logging
import os
import signal
import sys
import warnings

import hydra
from omegaconf import DictConfig

from divot_llm.config.loading import (
    CONF_DIR,
    ConfigError,
    compose_dictconfig,
    describe_config_error,
    missing_keys,
    register_configs,
    to_typed,
)
from divot_llm.config.schema import DivotConfig
from divot_llm.launch_guard import EXIT_USAGE, refuse

EXIT_CONFIG_ERROR = EXIT_USAGE  # 2
EXIT_INTERRUPTED = 143  # 128 + SIGTERM, the shell convention for "terminated"


def _overrides(argv: list[str]) -> list[str] | None:
    """The Hydra overrides in ``argv``, or None when Hydra's own flags (--help, --cfg,
    ...) are present and Hydra should handle the command line alone."""
    return None if any(arg.startswith("-") for arg in argv) else list(argv)


def _check_config(overrides: list[str]) -> None:
    """Compose once up front so that a bad key (``+key=`` too), a value out of range, a
    missing value or a local path the run reads that is not there exits with one clear
    message instead of a traceback deep inside start-up. The first rank of each node
    prints it (ranks of one node see the same config and files); every rank exits 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from divot_llm.config.paths import check_config_paths

    try:
        node = compose_dictconfig(overrides)  # names a missing value where it is set
        missing = missing_keys(node)
        if missing:
            raise ConfigError("these values must be set: " + ", ".join(missing))
        cfg = to_typed(node)
        # Only now the stages (torch, transformers, DeepSpeed: ~4 CPU-s): a mistyped key or a
        # missing value is refused in well under a second, before any of them loads.
        from divot_llm.train.stages import training_reads
        from divot_llm.train.trainer import check_ema_and_sampling

        check_ema_and_sampling(cfg)  # stage.ema / train.sample_every where they cannot work
        check_config_paths(cfg, training_reads(cfg))
    except (HydraException, OmegaConfBaseException, ConfigError) as exc:
        _refuse(f"divot-train: config error: {describe_config_error(exc)}")
    if not cfg.plan:
        _check_output_dir(cfg)


def _check_output_dir(cfg: DivotConfig) -> None:
    """Refuse, before Hydra writes ``.hydra/`` and its log into ``train.output_dir``, a
    folder that another live run holds or whose checkpoints ``train.resume`` cannot use
    (``resume=none`` over checkpoints, none complete, another model config): the refused
    command leaves that run's files as they were. Read-only; the trainer checks again
    under the lock. Exit 2, like a config error."""
    from divot_llm.train.checkpoint import CheckpointError
    from divot_llm.train.run_lock import RunLockedError
    from divot_llm.train.trainer import check_output_dir

    world_size = int(os.environ["WORLD_SIZE"]) if os.environ.get("WORLD_SIZE", "").isdigit() else None
    try:
        check_output_dir(cfg, world_size, lock=int(os.environ.get("RANK", "0")) == 0)
    except (RunLockedError, CheckpointError, FileExistsError) as exc:
        _refuse(f"divot-train: {exc}")


def _refuse(message: str) -> None:
    """Exit 2 on every rank with ``message`` printed once per node (``launch_guard.refuse``)."""
    sys.exit(refuse(message, int(os.environ.get("LOCAL_RANK", "0"))))


def run(cfg: DivotConfig) -> int:
    """Plan or train as ``cfg`` says; returns the process exit code."""
    # Libraries log build probes and set-up chatter at INFO through the root logger Hydra
    # configured; our own progress goes to the progress bar, metrics.jsonl and TensorBoard.
    logging.getLogger().setLevel(logging.WARNING)
    # Deprecations inside DeepSpeed/transformers that users cannot act on, once per rank and step.
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if cfg.plan:
        from divot_llm.train.plan import format_plan, make_plan

        plan, _, _ = make_plan(cfg)
        print(format_plan(plan, cfg))
        return 0

    from divot_llm.train import distributed
    from divot_llm.train.failures import FailureReport
    from divot_llm.train.trainer import INTERRUPTED, Trainer

    trainer = Trainer(cfg)
    failure = FailureReport(cfg.train.output_dir, rank=int(os.environ.get("RANK", "0")))
    try:
        distributed.init_distributed()
        failure.watch()
        trainer.setup()
        status = trainer.train()
    except Exception as exc:  # every error: reported once for the run, every rank stopped
        code = failure.report(exc)
        failure.quietly(trainer.cleanup)
        return code
    trainer.cleanup()
    failure.stop_watching()
    distributed.shutdown_distributed()
    return EXIT_INTERRUPTED if status == INTERRUPTED else 0


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    code = run(to_typed(cfg))
    if code:
        from divot_llm.train.failures import EXIT_TRAINING_ERROR, exit_now

        if code == EXIT_TRAINING_ERROR:
            exit_now(code)  # no teardown: it would wait on failed ranks and leftover workers
        sys.exit(code)


def main() -> None:
    """Console entry point (``divot-train``) and ``python -m divot_llm.train``."""
    # `kill -USR1 <pid>` prints every thread's Python stack: the first question about a hang.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    register_configs()  # the schemas Hydra's app composes onto, components' included
    # At exit the interpreter's last garbage collections would walk every object torch,
    # transformers and DeepSpeed made, for nothing: ~4 CPU-s per rank (a 2-rank CPU launch
    # ends ~6 s sooner without them). Frozen objects are skipped; logging still flushes
    # (its exit hook runs after this one) and files still close as modules are cleared.
    atexit.register(gc.freeze)
    overrides = _overrides(sys.argv[1:])
    if overrides is not None:
        _check_config(overrides)
    if int(os.environ.get("RANK", "0")) != 0:
        # One copy of Hydra's outputs (.hydra/, the job log file) per run, not per rank.
        sys.argv += ["hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    _app()


if __name__ == "__main__":
    main()
