#!/usr/bin/env bash
# The feature cache built by every GPU of this node -- or of every node of a hostfile --
# with the DeepSpeed launcher: each rank encodes its share of every source on its own GPU,
# and rank 0 writes the index once every rank is done (data_recipes/features.py).
#
#   GPUS_PER_NODE=8 launch/features.sh --out /cache/pretrain_7b -- experiment=pretrain_7b data.root=/datasets \
#       video_tokenizer.pretrained_path=/ckpt/Divot_tokenizer.bin video_tokenizer.vit_path=/ckpt/CLIP-ViT-H-14
#   HOSTFILE=launch/hostfile launch/features.sh --out /shared/cache ...   # several nodes (see launch/common.sh)
#   NPROC=2 launch/features.sh --out data/cache/demo -- experiment=demo data.root=data/synthetic   # CPU ranks
#
# Arguments are `divot-data features`'s (without --shard: each rank builds its own share).
# Env: as launch/common.sh (GPUS_PER_NODE, HOSTFILE, NODE_RANK, MASTER_ADDR, MASTER_PORT);
# NPROC=N starts N ranks on this machine's CPU instead (gloo, one thread each unless
# OMP_NUM_THREADS says otherwise; MASTER_PORT defaults to a free port).
# DIVOT_RANK_SILENCE_S (default 120): a rank not heard from for this long (killed outright)
# ends the build, exit 1 (over pdsh, put it in .deepspeed_env as launch/common.sh says).
# SIGTERM/SIGINT to this script's pid: the ranks stop between batches, it exits 143; run
# the same command again to resume (cached samples are skipped).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ -n "${NPROC:-}" ]]; then
  # on a CPU-only host `deepspeed` without --num_gpus starts a single rank
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  GPUS_PER_NODE="$NPROC"
  MASTER_PORT="${MASTER_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
fi
divot_deepspeed_module data_recipes features "$@"
