#!/usr/bin/env bash
# CPU demo of the pipeline as it stands, end to end, on the embedded default config
# (tiny models, synthetic data). `make demo` runs it inside the project's .venv.
#
#   1. write the synthetic dataset (real h264/mpeg4/vp9/gif videos, images, captions, QA)
#   2. inspect every shard: decode all media, check each caption against the pixels
#   3. compose + validate the demo experiment and save its fully resolved config
#   4. train it: 2 CPU ranks under the real `deepspeed` launcher (launch/train_cpu.sh),
#      ZeRO-2, fp32; validation before and after; checkpoints under $OUT/checkpoints
#      (run the demo again to continue a stopped run: train.resume=auto is the default)
#
# Environment: DEMO_DATA (default data/synthetic), DEMO_OUT (default outputs/demo),
# DEMO_SEED (default 0). Extra arguments are passed on as config overrides.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA=${DEMO_DATA:-data/synthetic}
OUT=${DEMO_OUT:-outputs/demo}
SEED=${DEMO_SEED:-0}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

step() { printf '\n==> %s\n' "$*"; }

step "1/4 synthetic data -> $DATA"
if [[ -f "$DATA/manifest.json" ]] && grep -q "\"seed\": $SEED," "$DATA/manifest.json"; then
  echo "already there (seed $SEED); delete $DATA to rebuild"
else
  divot-data synthetic --out "$DATA" --seed "$SEED" --overwrite
fi

step "2/4 inspect shards (decode every video/image, caption vs pixels)"
divot-data inspect "$DATA/*/*/shard-*.tar" --verify-synthetic

step "3/4 resolve the demo config -> $OUT/config.yaml"
divot-config experiment=demo "data.root=$DATA" "train.output_dir=$OUT" "$@" --save "$OUT" > /dev/null

step "4/4 train (2 CPU ranks, deepspeed launcher) -> $OUT"
bash launch/train_cpu.sh experiment=demo "data.root=$DATA" "train.output_dir=$OUT" "$@"

cat <<EOF2

Demo finished. Outputs:
  data     $(cd "$DATA" && pwd)   (train/ val/ shards, media/, annotations/*.jsonl)
  config   $(cd "$OUT" && pwd)/config.yaml
  metrics  $(cd "$OUT" && pwd)/metrics.jsonl   (tensorboard --logdir $OUT/tensorboard)
  ckpts    $(cd "$OUT" && pwd)/checkpoints/     (latest: $(cat "$OUT/checkpoints/latest"))
EOF2
