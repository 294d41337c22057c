# Shared by launch/pretrain.sh, sft_comp.sh, sft_gen.sh and features.sh (sourced, not run).
#
# Builds the `deepspeed` launcher command for divot-train (or a divot-data recipe) from
# the environment:
#   GPUS_PER_NODE  GPUs per node to use (default: all visible)
#   HOSTFILE       DeepSpeed hostfile for several nodes (see launch/hostfile.example);
#                  unset = this node only
#   NODE_RANK      with HOSTFILE: start only this node's ranks, without ssh/pdsh (run the
#                  script once on every node, e.g. from a SLURM step); unset = start all
#                  nodes from here over pdsh
#   MASTER_ADDR    address of the rank-0 node (multi-node; default: the first hostfile entry)
#   MASTER_PORT    rendezvous port (default 29500)
# Nothing is killed and no address is hard-coded: all of it comes from here or the hostfile.
# The GPU runtime environment (allocator, NCCL error handling and diagnostics) gets
# defaults from divot_gpu_env below, each only where the caller has not set it.
#
# The launcher runs under divot_llm.launch_guard: SIGTERM/SIGINT to this script's pid
# (or Ctrl-C) makes every local rank save a checkpoint and exit; the script returns only
# after the ranks have (exit 143), and no rank outlives it.

# GPU runtime environment, each variable set only when the caller has not set it (and
# exported, so the ranks inherit it). Over pdsh (HOSTFILE without NODE_RANK) DeepSpeed
# forwards only NCCL*/PYTHON*/UCX*/MV2* variables to the other nodes: put the others in a
# .deepspeed_env file there (KEY=VALUE lines), or start every node with NODE_RANK.
divot_gpu_env() {
  # Batches change shape every step (per-source batch sizes, 1-20 clips per sample,
  # token-budget batches), which fragments the caching allocator's fixed-size segments:
  # reserved-but-unusable memory grows until an allocation fails with memory to spare.
  # Expandable segments grow one mapping in place instead. PYTORCH_ALLOC_CONF is the
  # newer name (torch >= 2.9): either one set by the caller is left alone.
  if [[ -z "${PYTORCH_CUDA_ALLOC_CONF:-}" && -z "${PYTORCH_ALLOC_CONF:-}" ]]; then
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
  fi
  # A rank whose collective fails or times out ends its process, so the job stops
  # instead of the other ranks waiting on it for good: 3 (end the process without
  # ncclCommAbort, which can itself hang) is torch's default since 2.2; written out
  # because the DeepSpeed launcher sets nothing (torchrun sets 1) and the logs should
  # show what a run ran with. NCCL_ASYNC_ERROR_HANDLING is the pre-2.2 name.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-3}"
  # When the watchdog does time out, each rank writes its last collectives (the flight
  # recorder: which op, which sizes, how far each rank got) to /tmp/nccl_trace_rank_<N>:
  # what a hang at 64 ranks needs to be diagnosed at all. A ring of 2000 entries costs
  # a few MB of host memory.
  export TORCH_NCCL_TRACE_BUFFER_SIZE="${TORCH_NCCL_TRACE_BUFFER_SIZE:-2000}"
  export TORCH_NCCL_DUMP_ON_TIMEOUT="${TORCH_NCCL_DUMP_ON_TIMEOUT:-1}"
  # NCCL's own warnings (a fallback from InfiniBand to sockets, a failed NVLink/P2P
  # check) are otherwise silent and show up only as a slow run.
  export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
  # No NCCL_IB_* / NCCL_SOCKET_IFNAME here: the right HCAs, GID index and interface are
  # the cluster's (NCCL detects them); set them in the environment where yours differ.
}

divot_deepspeed() {
  divot_deepspeed_module divot_llm.train "$@"
}

# divot_deepspeed_module MODULE ARG...: every rank runs `python -m MODULE ARG...` (the
# launch_guard knows divot_llm.train and data_recipes ranks: launch/features.sh).
divot_deepspeed_module() {
  local module="$1"
  shift
  divot_gpu_env
  local args=(--no_local_rank --master_port "${MASTER_PORT:-29500}")
  if [[ -n "${GPUS_PER_NODE:-}" ]]; then
    args+=(--num_gpus "$GPUS_PER_NODE")
  fi
  if [[ -n "${HOSTFILE:-}" ]]; then
    args+=(--hostfile "$HOSTFILE")
    if [[ -n "${MASTER_ADDR:-}" ]]; then
      args+=(--master_addr "$MASTER_ADDR")
    fi
    if [[ -n "${NODE_RANK:-}" ]]; then
      args+=(--no_ssh --node_rank "$NODE_RANK")
    fi
  fi
  # --no_local_rank: Hydra would reject the --local_rank=N argument; ranks read LOCAL_RANK.
  exec python -m divot_llm.launch_guard deepspeed "${args[@]}" --module "$module" "$@"
}
