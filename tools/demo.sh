#!/usr/bin/env bash
# `make demo`: the whole Minitron recipe at toy scale on the CPU, offline, in minutes.
#
#   1. decompress the embedded corpora (data/corpora: King James Bible, Jane Austen's novels)
#   2. train a byte-level BPE tokenizer on both
#   3. tokenize each corpus into train/validation shards
#   4. pre-train a tiny teacher on the Bible (seeded: the same teacher on every machine)
#   5. `minitron pipeline --config recipes/demo.json`: correct the teacher on Austen, score,
#      prune width and depth, distill each student on Austen, train the same architectures from
#      random init on the same Austen tokens, evaluate, and print the report.
#
# Finished stages are not redone (the pipeline's steps keep done.json files; the stages here
# check their outputs), so an interrupted demo continues where it stopped. runs/demo
# holds everything; delete it to start over.
#
#   usage: tools/demo.sh [BUILD_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
bin=$build/minitron
run=runs/demo  # recipes/demo.json names these paths
[[ -x $bin ]] || { echo "demo: $bin not found (run 'make' first)" >&2; exit 1; }
# One thread: the summed order inside BLAS depends on the thread count, so one thread gives the
# same numbers whatever the core count (the README's figures), and a second thread buys little on the
# demo's 96-wide matrices (teacher steps on the 2-core machine, quiet: 9.6-12.8k tok/s with 1
# thread, 13.7-14.8k with 2; with another process on the cores, 2 threads can be several times
# slower).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$run/data"
start=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - start )) s)"; }

# Teacher pre-training size (tokens = steps x 8 x 128).
teacher_steps=${DEMO_TEACHER_STEPS:-1500}

stage "corpora"
for c in kjv austen; do
  [[ -s $run/data/$c.txt ]] || xz -dc "data/corpora/$c.txt.xz" > "$run/data/$c.txt"
done
# The tokenizer is trained on the first 1 MB of each corpus: enough for a 1024-token vocabulary.
[[ -s $run/data/tokenizer_sample.txt ]] || { head -c 1000000 "$run/data/kjv.txt"; head -c 1000000 "$run/data/austen.txt"; } > "$run/data/tokenizer_sample.txt"

stage "tokenizer"
[[ -s $run/tokenizer/tokenizer.json ]] || "$bin" tokenizer train --vocab-size 1024 --output "$run/tokenizer" "$run/data/tokenizer_sample.txt"

stage "tokenize"
for c in kjv austen; do
  [[ -s $run/data/${c}_val_000000.bin ]] || "$bin" tokenize --tokenizer "$run/tokenizer" --input "$run/data/$c.txt" \
    --output-prefix "$run/data/$c" --split-blank-lines --validation-tokens 40000 --shard-tokens 100000000
done

stage "teacher: pre-training on the King James Bible ($teacher_steps steps)"
if [[ ! -s $run/teacher/model/config.json ]]; then
  "$bin" train --config recipes/demo-teacher-config.json --tokenizer "$run/tokenizer/tokenizer.json" \
    --data "$run/data/kjv_train_*.bin" --validation-data "$run/data/kjv_val_000000.bin" --output "$run/teacher" \
    --device cpu --batch-size 8 --sequence-length 128 --steps "$teacher_steps" --learning-rate 5e-3 \
    --min-learning-rate 5e-4 --warmup-steps 20 --weight-decay 0 --eval-windows 32 --log-interval 50 \
    --save-dtype float32 --seed 1
fi

stage "pipeline (recipes/demo.json)"
"$bin" pipeline --config recipes/demo.json --run-dir "$run/pipeline"

stage "done"
echo "report: $run/pipeline/report.md (loss curves: $run/pipeline/loss_curves.svg)"
