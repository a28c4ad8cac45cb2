#!/usr/bin/env bash
# Output directories never lose files the tool did not write: prune, train, correct and distill refuse
# an output that holds other files, is the current directory (or above it), or overlaps the input
# model; they replace their own earlier checkpoints, and --resume keeps working.
set -euo pipefail
MINITRON=$1
WORK=$2
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_error() {  # expect_error PATTERN command...
  local pattern=$1; shift
  if "$@" > "$WORK.out" 2> "$WORK.err"; then fail "expected failure: $*"; fi
  mv "$WORK.err" err.out
  [ "$(wc -l < err.out)" -eq 1 ] || { cat err.out; fail "error is not one line: $*"; }
  grep -q "^minitron: error: .*$pattern" err.out || { cat err.out; fail "message lacks '$pattern'"; }
}
listing() { (cd "$1" && find . -type f -not -name err.out | LC_ALL=C sort | xargs -d '\n' md5sum; find . -type d | LC_ALL=C sort); }

# A tiny HF checkpoint (the GQA fixture) as the teacher, and a token shard for train/correct.
mkdir teacher && cp "$OLDPWD/tests/fixtures/llama3_gqa/config.json" "$OLDPWD/tests/fixtures/llama3_gqa/model.safetensors" teacher/
echo "# model card" > teacher/README.md
python3 - <<'PY'
import struct
tokens = [(i * 7 + 3) % 67 for i in range(600)]
with open("data.bin", "wb") as f:
    f.write(struct.pack("<256i", 20240801, 7, len(tokens), *([0] * 253)))
    f.write(struct.pack(f"<{len(tokens)}I", *tokens))
PY
prune() { "$MINITRON" prune --model teacher --random-scores 1 --hidden-size 24 "$@"; }

# The reviewer's case: a directory with the user's files is refused, and nothing in it changes.
mkdir -p victim/sub && echo precious > victim/notes.txt && echo kept > victim/sub/file.txt
before=$(listing victim)
expect_error "--output victim: holds 'notes.txt' and 1 more entries .*move those files away" prune --output victim
[ "$(listing victim)" = "$before" ] || fail "victim/ changed"
[ "$(cat victim/notes.txt)" = precious ] || fail "victim/notes.txt lost"
ls -A | grep -q '\.tmp-\|\.old-' && fail "temporary directories left behind"

# The current directory, its parent, and the input model's own directory (or inside it).
before=$(listing .)
expect_error "is the current directory" prune --output .
expect_error "contains the current directory" prune --output ..
expect_error "is the input model directory teacher" prune --output teacher
expect_error "is the input model directory" prune --output ./teacher/
expect_error "lies inside the input model directory teacher" prune --output teacher/model
[ "$(listing .)" = "$before" ] || fail "the work directory changed after refusals"
echo x > afile
expect_error "afile: exists and is not a directory" prune --output afile
[ "$(cat afile)" = x ] || fail "afile lost"

# A new output, then the same command into its own previous output: replaced, files complete.
prune --output pruned > prune1.log
[ -f pruned/config.json ] && [ -f pruned/model.safetensors ] && [ -f pruned/pruning.json ] || fail "pruned/ incomplete"
prune --output pruned --intermediate-size 64 > prune2.log
grep -q '"ffn_neurons"' pruned/pruning.json || fail "no pruning.json after re-run"
python3 -c "import json; c=json.load(open('pruned/config.json')); assert c['intermediate_size'] == 64, c"
# ... but not once the user put a file there.
echo mine > pruned/notes.txt
expect_error "--output pruned: holds 'notes.txt'" prune --output pruned
[ -f pruned/notes.txt ] || fail "pruned/notes.txt lost"
rm pruned/notes.txt

# train/correct write a run directory (model/, checkpoint-N/, metrics.jsonl): its model/ and
# checkpoints are checked before any step, and may not be the input model.
train() { "$MINITRON" "$@" --data data.bin --batch-size 2 --sequence-length 8 --device cpu --save-dtype float32 \
            --warmup-steps 0 --learning-rate 1e-3 --min-learning-rate 1e-4; }
train train --model teacher --output run --steps 2 --save-interval 1 > train1.log
# Again from scratch: replaces run/model and run/checkpoint-1 (training state included).
train train --model teacher --output run --steps 2 --save-interval 1 > train1.log
[ -f run/model/model.safetensors ] && [ -f run/checkpoint-1/training_state.json ] || fail "run/ incomplete"
train train --model teacher --output run --steps 3 --save-interval 1 --resume > train2.log
grep -q "resuming from run/checkpoint-1" train2.log || fail "did not resume"
[ -f run/checkpoint-2/training_state.json ] || fail "no checkpoint-2 after resume"
expect_error "run/model (under --output): is the input model directory run/model" \
  train correct --model run/model --output run --steps 1
expect_error "lies inside the input model directory" train train --model run/model --output run/model/again --steps 1
mkdir -p run2/model && echo precious > run2/model/notes.txt
expect_error "run2/model (under --output): holds 'notes.txt'" train train --model teacher --output run2 --steps 1
[ -f run2/model/notes.txt ] && [ ! -e run2/metrics.jsonl ] || fail "run2/ was touched"
# The output is checked before any weights load: a cut checkpoint is never read, so the error is
# the output's (a check after loading would report the truncated file instead).
mkdir cut && cp teacher/config.json cut/ && head -c "$(( $(stat -c %s teacher/model.safetensors) / 2 ))" teacher/model.safetensors > cut/model.safetensors
expect_error "run2/model (under --output): holds 'notes.txt'" train train --model cut --output run2 --steps 1
expect_error "run2/model (under --output): holds 'notes.txt'" train correct --model cut --output run2 --steps 1
expect_error "run2/model (under --output): holds 'notes.txt'" \
  train distill --teacher teacher --student cut --output run2 --steps 1
expect_error "truncated" train train --model cut --output run3 --steps 1
echo "output safety: ok"
