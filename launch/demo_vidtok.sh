#!/usr/bin/env bash
# The second CPU demo: the tiny LLM over the tokens of a tiny VidTok, both ways, end to end,
# decoded without diffusion. `make demo-vidtok` runs it inside the project's .venv (not
# part of `make demo`, not run by the tests).
#
#   1. the synthetic dataset (the same folder as launch/demo.sh's; written if not there)
#   2. two tiny VidToks trained on it (experiment=vidtok_tiny: 4x4x4, 9-frame 32x32 clips,
#      2 CPU ranks): KL (video_tokenizer=vidtok_tiny) and FSQ with 8^4 codes
#      (video_tokenizer=vidtok_tiny_fsq), each exported with divot-export vidtok; the
#      held-out videos reconstructed through each (divot-infer reconstruct): the colours a
#      tokenizer keeps bound what the LLM's videos can show
#   3. divot-data latent-stats: per-channel mean and std of the KL latents over the
#      training clips, stored with a copy of the KL tokenizer's config
#   4. per path -- kl: the normalised KL latents through the GMM head (model.head=gmm);
#      fsq: the FSQ codes as digits through the factorized softmax head
#      (model.head=fsq_factorized) -- experiment=demo_vidtok: pretrain -> divot-merge
#      --verify -> SFT-comp and SFT-gen from the merged pretrain -> merge (each stage from
#      its feature cache), then divot-infer comprehend asks "What color is the shape in the
#      video?" about every held-out video, and divot-infer generate makes a video for
#      every held-out caption, decoded by the VidTok itself (no de-tokenizer)
#   5. a report (tools/demo_report.py --vidtok): per path the losses per stage, how often
#      the held-out shape colour is named and how often the generated videos show the
#      caption's colours, next to chance and to the tokenizer's own reconstructions; the
#      tokenizers' held-out PSNR; the run time
#      (OUT/report.md, OUT/report.json)
#
# Environment: DEMO_DATA (default data/synthetic), DEMO_OUT (default outputs/demo_vidtok),
# DEMO_SEED (0), DEMO_VIDEOS (train videos, 320), DEMO_IMAGES (1000), DEMO_BATCH (per rank,
# 16), DEMO_KL_VIDTOK_STEPS (300) and DEMO_FSQ_VIDTOK_STEPS (600) for the two VidToks,
# DEMO_KL_VIDTOK_ARGS ("optim.lr=5e-3 data.batch_size=4") and DEMO_FSQ_VIDTOK_ARGS
# ("data.batch_size=4")
# (overrides of each VidTok run; set empty for experiment=vidtok_tiny's), DEMO_PRETRAIN_STEPS (500), DEMO_SFT_COMP_STEPS
# (500), DEMO_SFT_GEN_STEPS (50), DEMO_PATHS ("kl fsq"), DEMO_KL_GENERATE and
# DEMO_FSQ_GENERATE (extra divot-infer generate flags per path, e.g. "--mean" or
# "--temperature 0.5 --top-k 4"). Extra arguments are config overrides for every LLM stage
# (and latent-stats). Runs that already finished are kept (delete DEMO_OUT to start over);
# a stopped stage resumes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DATA=${DEMO_DATA:-data/synthetic}
ROOT=${DEMO_OUT:-outputs/demo_vidtok}
SEED=${DEMO_SEED:-0}
VIDEOS=${DEMO_VIDEOS:-320}
IMAGES=${DEMO_IMAGES:-1000}
PRETRAIN_STEPS=${DEMO_PRETRAIN_STEPS:-500}
SFT_COMP_STEPS=${DEMO_SFT_COMP_STEPS:-500}
SFT_GEN_STEPS=${DEMO_SFT_GEN_STEPS:-50}
BATCH=${DEMO_BATCH:-16}
read -r -a PATHS <<< "${DEMO_PATHS:-kl fsq}"
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
started=$SECONDS

EXPERIMENT=demo_vidtok
source launch/demo_common.sh
mkdir -p "$ROOT"
ROOT=$(cd "$ROOT" && pwd)  # absolute: the releases keep their tokenizer's path
OUT=$ROOT                  # the tokenizers' runs/ and releases/; each path has its own folder

# path_settings PATH: VIDTOK_STEPS and VIDTOK (the steps and overrides of its VidTok's
# training), TOKENIZER (the LLM stages' tokenizer and head overrides) and GENERATE (its
# extra divot-infer generate flags).
path_settings() {
  case $1 in
    kl)
      # Held-out reconstructions that keep the caption's shape / background colour, of 24
      # (a 40-video synthetic set): 11 / 18 after these 300 steps at lr 5e-3 and 4 clips per
      # rank; 10 / 14 after 600 at vidtok_tiny's 1.5e-3 and 4; 7 / 10 after vidtok_tiny's
      # own 900 steps with 2
      VIDTOK_STEPS=${DEMO_KL_VIDTOK_STEPS:-300}
      read -r -a VIDTOK <<< "${DEMO_KL_VIDTOK_ARGS-optim.lr=5e-3 data.batch_size=4}"
      TOKENIZER=(video_tokenizer=vidtok_tiny "video_tokenizer.pretrained_path=$ROOT/releases/vidtok_kl_stats/video_tokenizer" model.head=gmm)
      read -r -a GENERATE <<< "${DEMO_KL_GENERATE:-}" ;;
    fsq)
      # 4 clips per rank instead of 2: 15.6 dB held-out PSNR (above each clip's own colour,
      # 13.8 dB) and 10 / 21 of 24 colours kept, against 11.8 dB and 7 / 8 with 2 (lr 5e-3
      # and 4 made it worse: 10.0 dB, 4 / 10)
      VIDTOK_STEPS=${DEMO_FSQ_VIDTOK_STEPS:-600}
      read -r -a VIDTOK <<< "video_tokenizer=vidtok_tiny_fsq ${DEMO_FSQ_VIDTOK_ARGS-data.batch_size=4}"
      TOKENIZER=(video_tokenizer=vidtok_tiny_fsq "video_tokenizer.pretrained_path=$ROOT/releases/vidtok_fsq/video_tokenizer" model.head=fsq_factorized)
      read -r -a GENERATE <<< "${DEMO_FSQ_GENERATE:-}" ;;
    *) echo "DEMO_PATHS: unknown path $1 (kl or fsq)" >&2; exit 2 ;;
  esac
}
for path in "${PATHS[@]}"; do path_settings "$path"; done

# round_trip NAME: the held-out videos through the exported tokenizer NAME alone (its
# frames: 32x32 at 8 fps) into $ROOT/reconstruction/NAME, listed with their captions in
# reconstructed.jsonl: how well the VidTok itself keeps the colours the LLM is asked for.
round_trip() {
  local rec="$ROOT/reconstruction/$1" videos
  if [[ -f "$rec/reconstructed.jsonl" ]]; then return; fi
  mapfile -t videos < <(heldout caption video)
  quiet "$rec.log" divot-infer reconstruct --video-tokenizer "$ROOT/releases/$1/video_tokenizer" \
    --height 32 --width 32 --fps 8 "${videos[@]}" --out "$rec" > /dev/null
  python -c "
import json, pathlib
out = pathlib.Path('$rec')
with open(out / 'reconstructed.jsonl', 'w') as jsonl:
    for index, line in enumerate(open('$DATA/annotations/val_video_caption.jsonl')):
        video, = out.glob(f'{index:03d}_*.mp4')  # divot-infer reconstruct numbers its outputs
        jsonl.write(json.dumps({'caption': json.loads(line)['caption'], 'video': str(video)}) + '\\n')"
  echo "$1: ${#videos[@]} held-out videos reconstructed in $rec"
}

step "1/6 synthetic data -> $DATA"
synthetic_data

step "2/6 tiny VidToks on the synthetic clips (2 CPU ranks): ${PATHS[*]}"
for path in "${PATHS[@]}"; do
  path_settings "$path"
  echo "vidtok_$path: $VIDTOK_STEPS steps ${VIDTOK[*]}"
  train_and_export "vidtok_$path" vidtok "$VIDTOK_STEPS" experiment=vidtok_tiny "${VIDTOK[@]}"
  round_trip "vidtok_$path"
done

if [[ " ${PATHS[*]} " == *" kl "* ]]; then
  step "3/6 per-channel statistics of the KL latents over the training clips (divot-data latent-stats)"
  stats="$ROOT/releases/vidtok_kl_stats"
  if [[ -f "$stats/video_tokenizer/tokenizer_config.json" ]]; then
    echo "$stats already there"
  else
    quiet "$stats.log" divot-data latent-stats --out "$stats" --max-clips 1000 -- "experiment=$EXPERIMENT" \
      "data.root=$DATA" video_tokenizer=vidtok_tiny "video_tokenizer.pretrained_path=$ROOT/releases/vidtok_kl/video_tokenizer" \
      "$@" | tail -n 2
  fi
fi

# llm_path PATH: the three LLM stages of one path into $ROOT/PATH, then the held-out
# comprehension and generation (decoded by the path's VidTok).
llm_path() {
  local OUT="$ROOT/$1"
  local -a COMMON TOKENIZER GENERATE VIDTOK
  local VIDTOK_STEPS
  path_settings "$1"
  COMMON=("${TOKENIZER[@]}" "data.batch_size=$BATCH" "${@:2}")
  step "$1: pretrain ($PRETRAIN_STEPS steps, 2 CPU ranks, ZeRO-2)"
  train_stage pretrain "$PRETRAIN_STEPS" stage=pretrain
  step "$1: SFT for comprehension from the pretrain release ($SFT_COMP_STEPS steps)"
  train_stage sft_comp "$SFT_COMP_STEPS" stage=sft_comp data=synthetic_sft_comp \
    "stage.init_from=$OUT/releases/pretrain" train.eval_at_start=false
  step "$1: SFT for generation from the pretrain release ($SFT_GEN_STEPS steps)"
  train_stage sft_gen "$SFT_GEN_STEPS" stage=sft_gen data=synthetic_sft_gen \
    "stage.init_from=$OUT/releases/pretrain" train.eval_at_start=false
  step "$1: comprehend the held-out videos; generate a video for every held-out caption"
  heldout_inference "${GENERATE[@]}"
}

for index in "${!PATHS[@]}"; do
  step "$((index + 4))/6 the LLM over the ${PATHS[index]} tokens"
  llm_path "${PATHS[index]}" "$@"
done

step "6/6 report"
python tools/demo_report.py "$ROOT" --vidtok --data "$DATA" --seconds $((SECONDS - started)) \
  --json "$ROOT/report.json" --markdown "$ROOT/report.md"
echo "demo finished in $((SECONDS - started)) s"
