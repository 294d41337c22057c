#!/usr/bin/env bash
# CPU training on this machine with the real DeepSpeed launcher: NPROC ranks (default 2)
# over gloo, fp32 (the demo experiment's tiny models). Used by the demo and the tests.
#
#   launch/train_cpu.sh experiment=demo data.root=data/synthetic train.output_dir=outputs/demo
#
# Env: NPROC (default 2), MASTER_PORT (default: a free port), OMP_NUM_THREADS (default 1:
# two ranks with the default thread count would oversubscribe a 2-core machine).
# On a CPU-only host `deepspeed` without --num_gpus starts a single rank, hence the flag.
# SIGTERM/SIGINT to this script's pid: the ranks save a checkpoint, then it exits 143
# (divot_llm.launch_guard).
set -euo pipefail
export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PORT="${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
exec python -m divot_llm.launch_guard deepspeed --no_local_rank --num_gpus "${NPROC:-2}" --master_port "$PORT" --module divot_llm.train "$@"
