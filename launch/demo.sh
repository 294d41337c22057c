#!/usr/bin/env bash
# The whole pipeline on CPU, end to end: tiny models, synthetic data, the real tools.
# `make demo` runs it inside the project's .venv.
#
#   1. write the synthetic dataset (real h264/mpeg4/vp9/gif videos, images, captions, QA)
#   2. pretrain: 2 CPU ranks under the real `deepspeed` launcher (launch/train_cpu.sh), ZeRO-2
#   3. release it: divot-merge --verify, straight from the ZeRO checkpoint (it consolidates
#      the ranks' shards itself; `divot-export zero-to-fp32` writes them out on their own)
#   4. SFT for comprehension and SFT for generation, each from the merged pretrain release,
#      each merged the same way
#   5. the de-tokenizer: video-diffusion-pytorch's Unet3D + GaussianDiffusion (8 frames of
#      16x16) learns to draw the synthetic clips from the demo tokenizer's features
#      (experiment=vdm_demo), exported with divot-export detokenizer
#   6. divot-infer comprehend: the SFT-comp release answers "What color is the shape in the
#      video?" for every held-out video; divot-infer generate: the SFT-gen release samples
#      features for every held-out caption and the de-tokenizer turns them into an mp4 and
#      a PNG strip each
#   7. a report: losses per stage, releases, held-out accuracy, reconstruction PSNR, and how
#      often the generated videos show the caption's colours (tools/demo_report.py)
#
# Environment: DEMO_DATA (default data/synthetic), DEMO_OUT (default outputs/demo),
# DEMO_SEED (0), DEMO_VIDEOS (train videos, 320), DEMO_IMAGES (1000), DEMO_BATCH (per rank,
# 16), DEMO_PRETRAIN_STEPS, DEMO_SFT_COMP_STEPS, DEMO_SFT_GEN_STEPS, DEMO_DETOK_STEPS. Extra
# arguments are config overrides for every LLM stage. Runs that already finished are kept
# (delete DEMO_OUT to start over); a stopped stage resumes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA=${DEMO_DATA:-data/synthetic}
OUT=${DEMO_OUT:-outputs/demo}
SEED=${DEMO_SEED:-0}
VIDEOS=${DEMO_VIDEOS:-320}
IMAGES=${DEMO_IMAGES:-1000}
PRETRAIN_STEPS=${DEMO_PRETRAIN_STEPS:-500}
SFT_COMP_STEPS=${DEMO_SFT_COMP_STEPS:-500}
SFT_GEN_STEPS=${DEMO_SFT_GEN_STEPS:-50}
DETOK_STEPS=${DEMO_DETOK_STEPS:-100}
BATCH=${DEMO_BATCH:-16}
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
started=$SECONDS

step() { printf '\n==> [%ds] %s\n' $((SECONDS - started)) "$*"; }

# train_stage NAME STEPS OVERRIDES...: cache the frozen tokenizer's features of the stage's
# data (divot-data features), train from them (resuming if stopped), then merge a release.
train_stage() {
  local name=$1 steps=$2
  shift 2
  local run="$OUT/runs/$name" release="$OUT/releases/$name" cache="$OUT/cache/$name"
  if [[ -f "$release/release.json" ]]; then
    echo "$release already there"
    return
  fi
  divot-data features --out "$cache" -- experiment=demo "data.root=$DATA" "${COMMON[@]}" "$@" 2> /dev/null | tail -n 2
  bash launch/train_cpu.sh experiment=demo "data.root=$DATA" "data.feature_cache=$cache" \
    "train.output_dir=$run" "train.max_steps=$steps" "train.save_every=$steps" "train.eval_every=$steps" \
    "train.log_every=$(( steps / 5 > 0 ? steps / 5 : 1 ))" train.progress_bar=false "${COMMON[@]}" "$@" 2>&1 \
    | grep -E '^(divot-train|step|outputs|finished|resumed|stopped)' || true
  [[ -f "$run/checkpoints/latest" ]] || { echo "training $name failed: see $run/train.log" >&2; exit 1; }
  divot-merge --checkpoint "$run" --out "$release" --verify --overwrite 2>&1 | grep -E 'verify|release'
}

# Every stage: the demo tokenizer, larger batches (tiny steps are overhead-bound), and the
# command line's overrides.
COMMON=(video_tokenizer=divot_demo "data.batch_size=$BATCH" "$@")
step "1/7 synthetic data -> $DATA"
if [[ -f "$DATA/manifest.json" ]] && grep -q "\"seed\": $SEED," "$DATA/manifest.json" \
  && grep -q "\"train_videos\": $VIDEOS," "$DATA/manifest.json"; then
  echo "already there (seed $SEED, $VIDEOS videos); delete $DATA to rebuild"
else
  divot-data synthetic --out "$DATA" --seed "$SEED" --train-videos "$VIDEOS" --val-videos 24 \
    --images "$IMAGES" --samples-per-shard 64 --overwrite
fi

step "2/7 pretrain ($PRETRAIN_STEPS steps, 2 CPU ranks, ZeRO-2)"
train_stage pretrain "$PRETRAIN_STEPS" stage=pretrain

step "3/7 SFT for comprehension from the pretrain release ($SFT_COMP_STEPS steps)"
train_stage sft_comp "$SFT_COMP_STEPS" stage=sft_comp data=synthetic_sft_comp \
  "stage.init_from=$OUT/releases/pretrain" train.eval_at_start=false

step "4/7 SFT for generation from the pretrain release ($SFT_GEN_STEPS steps)"
train_stage sft_gen "$SFT_GEN_STEPS" stage=sft_gen data=synthetic_sft_gen \
  "stage.init_from=$OUT/releases/pretrain" train.eval_at_start=false

step "5/7 de-tokenizer: pixel-space video diffusion on the demo tokenizer's features ($DETOK_STEPS steps)"
if [[ -d "$OUT/releases/detok/detokenizer" ]]; then
  echo "$OUT/releases/detok already there"
else
  bash launch/train_cpu.sh experiment=vdm_demo "data.root=$DATA" "train.output_dir=$OUT/runs/detok" \
    "train.max_steps=$DETOK_STEPS" "train.save_every=$DETOK_STEPS" "train.eval_every=$DETOK_STEPS" \
    "train.log_every=$(( DETOK_STEPS / 5 > 0 ? DETOK_STEPS / 5 : 1 ))" train.progress_bar=false 2>&1 \
    | grep -E '^(divot-train|step|outputs|finished|resumed|stopped)' || true
  [[ -f "$OUT/runs/detok/checkpoints/latest" ]] || { echo "training detok failed: see $OUT/runs/detok/train.log" >&2; exit 1; }
  divot-export detokenizer "$OUT/runs/detok" "$OUT/releases/detok" 2>&1 | tail -n 1
fi

step "6/7 comprehend the held-out videos; generate a video for every held-out caption"
mkdir -p "$OUT/comprehension" "$OUT/generation"
mapfile -t heldout < <(python -c "
import json, sys
for line in open('$DATA/annotations/val_video_qa.jsonl'):
    print('$DATA/media/' + json.loads(line)['video'])")
divot-infer comprehend --release "$OUT/releases/sft_comp" "${heldout[@]}" --greedy --max-new-tokens 16 \
  --num-clips 4 -q "What color is the shape in the video?" --no-stream --batch-size 8 \
  --jsonl "$OUT/comprehension/answers.jsonl" > "$OUT/comprehension/answers.txt" 2> /dev/null
head -n 3 "$OUT/comprehension/answers.txt"
echo "... (${#heldout[@]} videos; all answers in $OUT/comprehension/answers.jsonl)"
mapfile -t captions < <(python -c "
import json
for line in open('$DATA/annotations/val_video_caption.jsonl'):
    print(json.loads(line)['caption'])")
divot-infer generate --release "$OUT/releases/sft_gen" --detokenizer "$OUT/releases/detok/detokenizer" \
  "${captions[@]}" --out "$OUT/generation" --jsonl "$OUT/generation/generated.jsonl" \
  > "$OUT/generation/generated.txt" 2> /dev/null
head -n 3 "$OUT/generation/generated.txt"
echo "... (${#captions[@]} captions; videos, strips and features in $OUT/generation)"

step "7/7 report"
python tools/demo_report.py "$OUT" --data "$DATA" --json "$OUT/report.json"
echo "demo finished in $((SECONDS - started)) s"
