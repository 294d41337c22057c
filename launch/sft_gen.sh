#!/usr/bin/env bash
# Stage 2b: generation SFT from the merged pretrain release, DeepSpeed launcher.
#
#   GPUS_PER_NODE=8 launch/sft_gen.sh stage.init_from=releases/pretrain data.root=/datasets \
#       video_tokenizer.pretrained_path=/ckpt/Divot_tokenizer.bin video_tokenizer.vit_path=/ckpt/CLIP-ViT-H-14
#
# Arguments are Hydra overrides on top of experiment=sft_gen_7b (EXPERIMENT overrides it);
# multi-node and port settings: see launch/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
divot_deepspeed "experiment=${EXPERIMENT:-sft_gen_7b}" "$@"
