#!/usr/bin/env bash
# The pruning half of the demo (issue 5, "shown end to end"): importance on a teacher, then
# 50% of the FFN, 25% of the hidden size and half the layers pruned separately, each by
# importance and by random scores at the same size; prints parameter counts and zero-shot
# validation losses. Importance-based pruning should beat random at every size.
#
#   tools/prune_demo.sh BUILD/minitron TEACHER_DIR TRAIN_SHARDS VALIDATION_SHARDS OUT_DIR [T] [SAMPLES]
set -euo pipefail
bin=$1 teacher=$2 train=$3 validation=$4 out=$5 T=${6:-256} samples=${7:-64}
mkdir -p "$out"
config=$teacher/config.json
get() { /usr/bin/python3 -c "import json,sys; print(json.load(open('$config'))['$1'])"; }
hidden=$(get hidden_size) ffn=$(get intermediate_size) layers=$(get num_hidden_layers)
half_ffn=$(( ffn / 2 )) hidden75=$(( hidden * 3 / 4 / 8 * 8 )) half_layers=$(( layers / 2 ))

"$bin" importance --model "$teacher" --data "$train" --samples "$samples" --sequence-length "$T" --batch-size 8 \
  --layer-data "$validation" --layer-windows 16 --block-size "$(( layers - half_layers ))" --output "$out/scores.json"

run() {  # name, flags...
  local name=$1; shift
  for source in "--scores $out/scores.json" "--random-scores 1"; do
    local tag; tag=$([[ $source == --scores* ]] && echo importance || echo random)
    echo "== $name ($tag)"
    # shellcheck disable=SC2086
    "$bin" prune --model "$teacher" $source --output "$out/$name-$tag" "$@" --data "$validation" \
      --sequence-length "$T" --eval-windows 16 | grep -E "pruned:|zero-shot"
  done
}
run ffn50 --intermediate-size "$half_ffn"
run hidden75 --hidden-size "$hidden75"
run depth50 --num-layers "$half_layers"
