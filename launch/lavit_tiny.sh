#!/usr/bin/env bash
# Video-LaVIT, tiny and end to end on the CPU: every part trained or built at test size on
# the synthetic set, assembled into a release root in the published Video-LaVIT-v1 layout,
# and every `divot-infer lavit` mode run on it. `make lavit-tiny` runs it inside the
# project's .venv; tests/launch/test_lavit_tiny.py runs it in CI. What it shows is that the
# pieces fit and each output decodes -- at these sizes and steps the videos are not good.
#
#   1. the synthetic dataset (LAVIT_DATA, written if not there)
#   2. the motion tokenizer (experiment=motion_tokenizer_tiny) -> ROOT/motion_tokenizer/
#   3. the keyframe tokenizer (keyframe_tokenizer=lavit_tiny, random from the seed: there is
#      no training stage for it) and the keyframe image de-tokenizer (random, tiny) ->
#      ROOT/visual_tokenizer/, ROOT/image_detokenizer/ (tools/lavit_random_parts.py)
#   4. the LLM, each stage from a tokens cache of its data (every clip's keyframe and motion
#      codes, divot-data motion-cache --tokens): stage=lavit_pretrain -> divot-merge --verify
#      -> ROOT/language_model/, then stage=lavit_sft from it -> ROOT/language_model_sft/
#   5. the video de-tokenizer (stage=lavit_detok) -> ROOT/video_detokenizer/
#   6. divot-infer lavit t2v, i2v, long, reconstruct, comprehend on held-out inputs -> OUT/infer/
#      (one process: tools/lavit_modes.py runs the five command lines, printing each)
#
# Environment: LAVIT_DATA (default data/synthetic), LAVIT_OUT (outputs/lavit_tiny),
# LAVIT_SEED (0), LAVIT_VIDEOS (train videos when the data is written, 64), NPROC (ranks of
# every training run, 1), LAVIT_MOTION_STEPS (60; 0: an untrained one), LAVIT_PRETRAIN_STEPS (40),
# LAVIT_SFT_STEPS (20; 0 skips SFT), LAVIT_DETOK_STEPS (20; 0: an untrained one), LAVIT_INFER_STEPS (de-tokenizer sampler
# steps, 2). Parts already written are kept (delete LAVIT_OUT to start over). The test runs it
# with LAVIT_MOTION_STEPS=0, LAVIT_SFT_STEPS=0 and LAVIT_DETOK_STEPS=0: the LLM pretraining,
# the release layout and every mode, in CI time (each skipped stage has its own tests).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA=${LAVIT_DATA:-data/synthetic}
OUT=${LAVIT_OUT:-outputs/lavit_tiny}
SEED=${LAVIT_SEED:-0}
VIDEOS=${LAVIT_VIDEOS:-64}
IMAGES=16
MOTION_STEPS=${LAVIT_MOTION_STEPS:-60}
PRETRAIN_STEPS=${LAVIT_PRETRAIN_STEPS:-40}
SFT_STEPS=${LAVIT_SFT_STEPS:-20}
DETOK_STEPS=${LAVIT_DETOK_STEPS:-20}
INFER_STEPS=${LAVIT_INFER_STEPS:-2}
export NPROC=${NPROC:-1} DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
started=$SECONDS
source launch/demo_common.sh
mkdir -p "$OUT/release" "$OUT/infer"
OUT=$(cd "$OUT" && pwd)
ROOT=$OUT/release  # the Video-LaVIT-v1 layout

# train NAME STEPS OVERRIDES...: one stage into $OUT/runs/NAME (resuming if stopped), STEPS steps,
# one checkpoint and one validation (one batch) at the end; NPROC ranks through the deepspeed launcher
# (launch/train_cpu.sh), or one process without it.
train() {
  local name=$1 steps=$2
  shift 2
  local run="$OUT/runs/$name"
  local args=("$@" "data.root=$DATA" "train.output_dir=$run" "train.max_steps=$steps" "train.save_every=$steps"
              "train.eval_every=$steps" train.eval_at_start=false train.max_eval_batches=1 "train.log_every=$(( steps / 5 > 0 ? steps / 5 : 1 ))"
              train.progress_bar=false)
  if [[ $NPROC == 1 ]]; then
    divot-train "${args[@]}" 2>&1 | grep -E '^(divot-train|step|finished|resumed|stopped)' || true
  else
    bash launch/train_cpu.sh "${args[@]}" 2>&1 | grep -E '^(divot-train|step|finished|resumed|stopped)' || true
  fi
  [[ -f "$run/checkpoints/latest" ]] || { echo "training $name failed: see $run/train.log" >&2; exit 1; }
}

step "synthetic data -> $DATA"
synthetic_data

UNTRAINED=()
if (( MOTION_STEPS > 0 )); then
  step "motion tokenizer ($MOTION_STEPS steps) -> $ROOT/motion_tokenizer"
  if [[ ! -d "$ROOT/motion_tokenizer" ]]; then
    train motion_tokenizer "$MOTION_STEPS" experiment=motion_tokenizer_tiny
    divot-export motion-tokenizer "$OUT/runs/motion_tokenizer" "$ROOT/motion_tokenizer" 2>&1 | tail -n 1
  fi
else  # 0: an untrained one (its training is tested on its own: tests/train/test_motion_tokenizer.py)
  UNTRAINED+=(--motion-tokenizer lavit_tiny)
fi
(( DETOK_STEPS > 0 )) || UNTRAINED+=(--motion-detokenizer lavit_tiny)  # (tests/train/test_lavit_detok.py)

step "untrained tiny parts -> $ROOT (tools/lavit_random_parts.py)"
python tools/lavit_random_parts.py --out "$ROOT" --seed "$SEED" "${UNTRAINED[@]}"

# train_llm NAME STEPS TARGET OVERRIDES...: the tokens cache of the stage's data, the stage
# (train), then divot-merge --verify its language_model/ folder to TARGET; kept when TARGET is there.
train_llm() {
  local name=$1 steps=$2 target=$3
  shift 3
  [[ -d "$target" ]] && { echo "$target already there"; return; }
  local cache="$OUT/cache/$name"
  quiet "$cache.log" divot-data motion-cache --tokens --out "$cache" -- "$@" "data.root=$DATA" "${TOKENIZERS[@]}"
  grep -E "^(motion cache|skipped)" "$cache.log" || true
  train "$name" "$steps" "$@" "data.motion_cache=$cache" "${TOKENIZERS[@]}"
  divot-merge --checkpoint "$OUT/runs/$name" --out "$target" --verify 2>&1 | grep -E 'verify|release'
}
TOKENIZERS=("motion_tokenizer.pretrained_path=$ROOT/motion_tokenizer" "keyframe_tokenizer.pretrained_path=$ROOT/visual_tokenizer")

step "LLM pretraining ($PRETRAIN_STEPS steps) -> $ROOT/language_model"
train_llm lavit_pretrain "$PRETRAIN_STEPS" "$ROOT/language_model" experiment=lavit_pretrain_tiny
if (( SFT_STEPS > 0 )); then  # 0: no SFT (comprehend then asks language_model/)
  step "LLM SFT ($SFT_STEPS steps) -> $ROOT/language_model_sft"
  train_llm lavit_sft "$SFT_STEPS" "$ROOT/language_model_sft" experiment=lavit_sft_tiny \
    "model.llm.path=$ROOT/language_model" "model.tokenizer_path=$ROOT/language_model"
fi

if (( DETOK_STEPS > 0 )); then  # 0: an untrained one, written with the keyframe tokenizer above
  step "video de-tokenizer ($DETOK_STEPS steps) -> $ROOT/video_detokenizer"
  if [[ ! -d "$ROOT/video_detokenizer" ]]; then
    train lavit_detok "$DETOK_STEPS" experiment=lavit_detok_tiny
    divot-export motion-detokenizer "$OUT/runs/lavit_detok" "$ROOT/video_detokenizer" 2>&1 | tail -n 1
  fi
fi

step "every mode on held-out inputs -> $OUT/infer"
mapfile -t videos < <(heldout caption video | sed -n 1,2p)
mapfile -t captions < <(heldout caption caption | sed -n 1,2p)
image=$(find "$DATA/media/images" -name 'img-*.jpg' | sort | head -n 1)  # the keyframe of i2v
# every divot-infer lavit mode, in one process (the command lines are printed as they run)
quiet "$OUT/infer.log" python tools/lavit_modes.py --release "$ROOT" --out "$OUT/infer" --seed "$SEED" \
  --steps "$INFER_STEPS" --captions "${captions[@]}" --videos "${videos[@]}" --image "$image" > "$OUT/infer/modes.txt"
grep -E '^(\$|.*-> )' "$OUT/infer/modes.txt" | cut -c1-160
cat "$OUT/infer/answers.txt"
step "done: $ROOT (release layout), $OUT/infer (videos, strips, metrics.json, answers.txt)"
