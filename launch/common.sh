# Shared by launch/pretrain.sh, sft_comp.sh and sft_gen.sh (sourced, not run).
#
# Builds the `deepspeed` launcher command for divot-train from the environment:
#   GPUS_PER_NODE  GPUs per node to use (default: all visible)
#   HOSTFILE       DeepSpeed hostfile for several nodes (see launch/hostfile.example);
#                  unset = this node only
#   NODE_RANK      with HOSTFILE: start only this node's ranks, without ssh/pdsh (run the
#                  script once on every node, e.g. from a SLURM step); unset = start all
#                  nodes from here over pdsh
#   MASTER_ADDR    address of the rank-0 node (multi-node; default: the first hostfile entry)
#   MASTER_PORT    rendezvous port (default 29500)
# Nothing is killed and no address is hard-coded: all of it comes from here or the hostfile.
#
# The launcher runs under divot_llm.launch_guard: SIGTERM/SIGINT to this script's pid
# (or Ctrl-C) makes every local rank save a checkpoint and exit; the script returns only
# after the ranks have (exit 143), and no rank outlives it.

divot_deepspeed() {
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
  exec python -m divot_llm.launch_guard deepspeed "${args[@]}" --module divot_llm.train "$@"
}
