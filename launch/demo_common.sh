# Shared by launch/demo.sh and launch/demo_vidtok.sh (sourced, not run): their steps, the
# synthetic data they share, and the LLM stage they repeat.
#
# Reads: started (the script's start, in $SECONDS); DATA, SEED, VIDEOS, IMAGES (the
# synthetic set); for train_stage also OUT (its runs/, cache/ and releases/ go there),
# EXPERIMENT and COMMON (overrides of every LLM stage).

step() { printf '\n==> [%ds] %s\n' $((SECONDS - started)) "$*"; }

# quiet LOG COMMAND...: run COMMAND with its stderr (progress bars) in LOG; when it fails,
# say so with the end of LOG and stop the demo.
quiet() {
  local log=$1
  shift
  mkdir -p "$(dirname "$log")"
  "$@" 2> "$log" || { echo "$1 failed (exit $?): the end of $log:" >&2; tail -n 5 "$log" >&2; exit 1; }
}

# synthetic_data: write the synthetic set to $DATA, unless it is there with this seed and
# video count (both demos read the same folder by default).
synthetic_data() {
  if [[ -f "$DATA/manifest.json" ]] && grep -q "\"seed\": $SEED," "$DATA/manifest.json" \
    && grep -q "\"train_videos\": $VIDEOS," "$DATA/manifest.json"; then
    echo "already there (seed $SEED, $VIDEOS videos); delete $DATA to rebuild"
  else
    divot-data synthetic --out "$DATA" --seed "$SEED" --train-videos "$VIDEOS" --val-videos 24 \
      --images "$IMAGES" --samples-per-shard 64 --overwrite
  fi
}

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
  # --workers 0: the tiny tokenizer encodes on the CPU, so a decoding worker only competes with
  # it for the 2 cores, and handing 2688 samples across processes costs more than it saves
  # (pretrain: 21 s and 28 CPU-s in one process, 50 s and 38 CPU-s with one worker)
  quiet "$cache.log" divot-data features --workers 0 --out "$cache" -- "experiment=$EXPERIMENT" "data.root=$DATA" \
    "${COMMON[@]}" "$@" | tail -n 2
  bash launch/train_cpu.sh "experiment=$EXPERIMENT" "data.root=$DATA" "data.feature_cache=$cache" \
    "train.output_dir=$run" "train.max_steps=$steps" "train.save_every=$steps" "train.eval_every=$steps" \
    "train.log_every=$(( steps / 5 > 0 ? steps / 5 : 1 ))" train.progress_bar=false "${COMMON[@]}" "$@" 2>&1 \
    | grep -E '^(divot-train|step|outputs|finished|resumed|stopped)' || true
  [[ -f "$run/checkpoints/latest" ]] || { echo "training $name failed: see $run/train.log" >&2; exit 1; }
  divot-merge --checkpoint "$run" --out "$release" --verify --overwrite 2>&1 | grep -E 'verify|release'
}

# train_and_export NAME KIND STEPS OVERRIDES...: train a model beside the LLM (its experiment
# and data in OVERRIDES) into $OUT/runs/NAME with launch/train_cpu.sh (resuming if stopped),
# then `divot-export KIND` it to $OUT/releases/NAME; kept when that already holds its folder.
train_and_export() {
  local name=$1 kind=$2 steps=$3
  shift 3
  local run="$OUT/runs/$name" release="$OUT/releases/$name"
  if compgen -G "$release/*/" > /dev/null; then
    echo "$release already there"
    return
  fi
  bash launch/train_cpu.sh "data.root=$DATA" "train.output_dir=$run" \
    "train.max_steps=$steps" "train.save_every=$steps" "train.eval_every=$steps" \
    "train.log_every=$(( steps / 5 > 0 ? steps / 5 : 1 ))" train.progress_bar=false "$@" 2>&1 \
    | grep -E '^(divot-train|step|outputs|finished|resumed|stopped)' || true
  [[ -f "$run/checkpoints/latest" ]] || { echo "training $name failed: see $run/train.log" >&2; exit 1; }
  divot-export "$kind" "$run" "$release" 2>&1 | tail -n 1
}

# heldout KIND FIELD: FIELD of every line of the held-out annotations/val_video_KIND.jsonl
# (qa or caption), one a line; a video as its path.
heldout() {
  python -c "
import json
for line in open('$DATA/annotations/val_video_$1.jsonl'):
    value = json.loads(line)['$2']
    print('$DATA/media/' + value if '$2' == 'video' else value)"
}

# heldout_inference GENERATE_ARGS...: the SFT-comp release in $OUT answers "What color is
# the shape in the video?" for every held-out video (comprehension/answers.jsonl), and the
# SFT-gen release makes a video for every held-out caption (generation/generated.jsonl:
# an mp4, a PNG strip and the features each), with GENERATE_ARGS added to divot-infer generate.
heldout_inference() {
  local heldout captions
  mkdir -p "$OUT/comprehension" "$OUT/generation"
  mapfile -t heldout < <(heldout qa video)
  quiet "$OUT/comprehension/answers.log" divot-infer comprehend --release "$OUT/releases/sft_comp" \
    "${heldout[@]}" --greedy --max-new-tokens 16 --num-clips 4 -q "What color is the shape in the video?" \
    --no-stream --batch-size 8 --jsonl "$OUT/comprehension/answers.jsonl" > "$OUT/comprehension/answers.txt"
  head -n 3 "$OUT/comprehension/answers.txt"
  echo "... (${#heldout[@]} videos; all answers in $OUT/comprehension/answers.jsonl)"
  mapfile -t captions < <(heldout caption caption)
  quiet "$OUT/generation/generated.log" divot-infer generate --release "$OUT/releases/sft_gen" "$@" \
    "${captions[@]}" --out "$OUT/generation" --jsonl "$OUT/generation/generated.jsonl" \
    > "$OUT/generation/generated.txt"
  head -n 3 "$OUT/generation/generated.txt"
  echo "... (${#captions[@]} captions; videos, strips and features in $OUT/generation)"
}
