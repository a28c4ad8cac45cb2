#!/usr/bin/env bash
# The pruning half of the demo (issue 5, "shown end to end"): importance on a teacher, then
# 50% of the FFN, 25% of the hidden size and half the layers pruned separately, each by
# importance and by random scores at the same size; prints parameter counts and zero-shot
# validation losses against five random-score draws. Importance-based pruning should beat random
# at every size.
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

# Zero-shot validation loss of one pruned model: name, score source flags, target flags...
pruned_loss() {
  local name=$1 source=$2; shift 2
  # shellcheck disable=SC2086
  "$bin" prune --model "$teacher" $source --output "$out/$name" "$@" --data "$validation" \
    --sequence-length "$T" --eval-windows 16 | tee "$out/$name.log" | sed -n 's/.*pruned \([0-9.]*\).*/\1/p'
}
# Importance against five random draws at the same size: one lucky or unlucky draw proves little.
seeds="1 2 3 4 5"
echo
echo "| target | parameters | importance | random (best of 5) | random (mean of 5) |"
echo "|---|---:|---:|---:|---:|"
run() {  # name, target flags...
  local name=$1; shift
  local ours; ours=$(pruned_loss "$name-importance" "--scores $out/scores.json" "$@")
  local params; params=$(sed -n 's/^pruned: \([^ ]*\) parameters.*/\1/p' "$out/$name-importance.log")
  local randoms=""
  for seed in $seeds; do randoms="$randoms $(pruned_loss "$name-random$seed" "--random-scores $seed" "$@")"; done
  echo "$randoms" | awk -v n="$name" -v p="$params" -v o="$ours" \
    '{ best = $1; sum = 0; for (i = 1; i <= NF; ++i) { sum += $i; if ($i < best) best = $i }
       printf "| %s | %s | %s | %.4f | %.4f |\n", n, p, o, best, sum / NF }'
}
run ffn50 --intermediate-size "$half_ffn"
run hidden75 --hidden-size "$hidden75"
run depth50 --num-layers "$half_layers"
