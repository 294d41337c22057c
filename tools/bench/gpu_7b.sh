#!/usr/bin/env bash
# The 7B GPU check (tools/bench/gpu_7b.py) on a GPU machine without network access, from
# the repository root or anywhere:
#
#   tools/bench/gpu_7b.sh --budget-s 420            # arguments go to gpu_7b.py
#
# First, on a machine with network: `python tools/bench/gpu_prep.py` fills wheels/ (the
# packages the GPU image lacks + the Mistral tokenizer.model); copy or carry that folder
# along with the working tree. Here they are installed with pip from that folder alone,
# and the run gets the launch scripts' GPU environment (launch/common.sh: allocator and
# NCCL settings, each only where not already set). Env: PYTHON (default python3),
# WHEELS (default wheels). With $OUT set, the JSON summary (gpu_7b.json) and the whole
# log (gpu_7b.log) are written there as the run goes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
source launch/common.sh
divot_gpu_env
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
if [[ -d "$WHEELS" ]]; then
  # --no-build-isolation: the editable build uses the image's setuptools (no index to
  # fetch one from); pip keeps every installed package that already fits.
  "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" --no-build-isolation -e .
elif ! "$PYTHON" -c "import deepspeed, hydra, webdataset, av, diffusers" 2>/dev/null; then
  echo "gpu_7b.sh: packages are missing and there is no $WHEELS/ folder:" \
    "run 'python tools/bench/gpu_prep.py' on a machine with network first" >&2
  exit 2
fi
args=()
if [[ -f "$WHEELS/mistral_tokenizer/tokenizer.model" ]]; then
  args+=(--tokenizer "$WHEELS/mistral_tokenizer")
fi
export PYTHONUNBUFFERED=1
if [[ -n "${OUT:-}" ]]; then  # the whole log beside the JSON summary, also if the run is cut off
  set -o pipefail
  "$PYTHON" tools/bench/gpu_7b.py "${args[@]}" "$@" 2>&1 | tee "$OUT/gpu_7b.log"
else
  exec "$PYTHON" tools/bench/gpu_7b.py "${args[@]}" "$@"
fi
