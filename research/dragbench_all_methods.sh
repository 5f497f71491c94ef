#!/usr/bin/env bash
# One command for a GPU: every drag method on a DragBench or Drag100 folder, one evaluation for all.
#
#   bash research/dragbench_all_methods.sh DATASET OUT [METHODS] [-- extra bench-run flags]
#
# DATASET: a DragBench (original_image.png + meta_data.pkl) or Drag100 (original.jpg + mask.png +
# points.json) folder, found recursively. OUT: a folder; each method writes OUT/<method>/ (resumed
# when run again), then `gooddrag bench eval` scores them all together (DAI, MD with DIFT, IF with
# LPIPS; add GScore with JUDGE_URL=http://host:port/v1 and JUDGE_MODEL=name set) into one joint table.
# METHODS (default: every method): comma-separated, e.g. gooddrag,dragdiffusion,freedrag.
# Model: MODEL (default stable-diffusion-v1-5/stable-diffusion-v1-5), DTYPE (default fp16), DEVICE
# (default cuda), METRICS (default dai,md,if; gscore is added when JUDGE_URL is set).
set -euo pipefail
DATASET=${1:?dataset folder}; OUT=${2:?output folder}; METHODS=${3:-gooddrag,gooddrag-plus,dragdiffusion,freedrag,dragnoise,fastdrag}
shift $(( $# < 3 ? $# : 3 )); [ "${1:-}" = "--" ] && shift
MODEL=${MODEL:-stable-diffusion-v1-5/stable-diffusion-v1-5}; DTYPE=${DTYPE:-fp16}; DEVICE=${DEVICE:-cuda}
known=$(gooddrag edit --help | sed -n 's/.*--method {\([^}]*\)}.*/\1/p' | head -1)
folders=()
for method in ${METHODS//,/ }; do
  if [[ ",$known," != *",$method,"* ]]; then echo "skipping $method: not a method of this install ($known)"; continue; fi
  gooddrag bench run "$DATASET" --out "$OUT/$method" --method "$method" --model "$MODEL" --dtype "$DTYPE" --device "$DEVICE" "$@"
  folders+=("$OUT/$method")
done
metrics=${METRICS:-dai,md,if}
[ -n "${JUDGE_URL:-}" ] && metrics=$metrics,gscore
judge=(); [ -n "${JUDGE_URL:-}" ] && judge=(--judge-url "$JUDGE_URL" --judge-model "${JUDGE_MODEL:?set JUDGE_MODEL}")
gooddrag bench eval "${folders[@]}" --metrics "$metrics" --device "$DEVICE" "${judge[@]}"
