#!/usr/bin/env bash
# --global-batch-size (Megatron-LM's: sequences per optimizer step over all ranks): two processes
# launched the way torchrun does, each accumulating 4 / (1 x 2) = 2 micro-batches, log the losses
# of one process accumulating 4; the refusals (not a whole number, both flags) are one line each.
set -euo pipefail
MINITRON=$1
WORK=$2
source "$(dirname "$0")/cli_test_lib.sh"
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
# Two processes share the machine's cores: one OpenMP thread each (see test_distributed_cli.sh).
export OMP_NUM_THREADS=1

small_training_run "$OLDPWD"

train() {  # train OUT [extra flags]; the launcher's variables come from the caller's environment
  local out=$1; shift
  timeout 300 "$MINITRON" train --device cpu --config config.json --data 'shards/austen_train_*.bin' \
    --output "$out" --batch-size 1 --sequence-length 32 --steps 3 --learning-rate 3e-3 --warmup-steps 1 \
    --save-dtype float32 "$@"
}

# One process: --global-batch-size 4 is 4 micro-batches of 1, the same run as --grad-accumulation 4.
train single --global-batch-size 4 > single.log
train accumulated --grad-accumulation 4 > accumulated.log
python3 - single/metrics.jsonl accumulated/metrics.jsonl <<'PY' || fail "--global-batch-size 4 alone is not --grad-accumulation 4"
import json, sys
one, two = ([(r["loss"], r["grad_norm"]) for r in map(json.loads, open(p)) if "loss" in r] for p in sys.argv[1:3])
assert len(one) == 3 and one == two, (one, two)
PY

# Two processes with the same flags: 2 micro-batches each, the same 4 windows per step.
port=$(free_port)
RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port train parallel --global-batch-size 4 \
  > rank0.log 2> rank0.err &
rank0=$!
RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port train parallel --global-batch-size 4 \
  > /dev/null 2> rank1.err &
rank1=$!
wait $rank0 || { cat rank0.log rank0.err rank1.err; fail "rank 0 failed"; }
wait $rank1 || { cat rank1.err; fail "rank 1 failed"; }
# The same losses up to the order in which the four micro-batches' fp32 gradients were summed
# (~1e-7 relative per weight, carried through 2 Adam updates at learning rate 3e-3; measured ~1e-9
# relative): 1e-6 relative is above that and far below what --grad-accumulation 4 on each rank
# (8 windows a step) changes (9e-4 relative at the first step).
python3 - single/metrics.jsonl parallel/metrics.jsonl <<'PY' || fail "two ranks with --global-batch-size 4 differ from one process"
import json, sys
single, parallel = ([r for r in map(json.loads, open(p)) if "loss" in r] for p in sys.argv[1:3])
assert [r["step"] for r in single] == [1, 2, 3] == [r["step"] for r in parallel], (single, parallel)
for a, b in zip(single, parallel):
    assert abs(a["loss"] - b["loss"]) <= 1e-6 * abs(a["loss"]), (a["step"], a["loss"], b["loss"])
PY

# Refusals, before any rank waits for another (no MASTER_ADDR needed to see them) or writes anything.
WORLD_SIZE=2 RANK=0 expect_error "--global-batch-size 3: not a whole number of micro-batches of --batch-size 1 on 2 rank(s) (expected a multiple of 1 x 2 = 2" \
  train not-divisible --global-batch-size 3
expect_error "--global-batch-size and --grad-accumulation: both given" train both --global-batch-size 4 --grad-accumulation 4
expect_error "--global-batch-size: value 0 is out of range" train zero --global-batch-size 0
[ ! -e not-divisible ] && [ ! -e both ] && [ ! -e zero ] || fail "a refused run created its --output"
echo OK
