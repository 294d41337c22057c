#!/usr/bin/env bash
# Stage 1: pretraining (video/image comprehension + generation mix), DeepSpeed launcher.
#
#   GPUS_PER_NODE=8 launch/pretrain.sh data.root=/datasets \
#       model.llm.path=/ckpt/Mistral-7B-Instruct-v0.1 model.tokenizer_path=/ckpt/cvlm_mistral_instruct_tokenizer \
#       video_tokenizer.pretrained_path=/ckpt/Divot_tokenizer.bin video_tokenizer.vit_path=/ckpt/CLIP-ViT-H-14
#   HOSTFILE=launch/hostfile launch/pretrain.sh ...      # several nodes (see launch/common.sh)
#
# Arguments are Hydra overrides on top of experiment=pretrain_7b (EXPERIMENT overrides it).
# A SIGTERM/SIGINT saves a checkpoint and exits 143; run the same command again to resume.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
divot_deepspeed "experiment=${EXPERIMENT:-pretrain_7b}" "$@"
