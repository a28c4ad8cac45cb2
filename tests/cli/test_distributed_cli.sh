#!/usr/bin/env bash
# Data-parallel `minitron train`: two processes launched the way torchrun does (RANK,
# WORLD_SIZE, MASTER_ADDR, MASTER_PORT) against one process taking both ranks' windows as
# micro-batches (--grad-accumulation 2); rank 1 writing nothing; the launcher mistakes a user
# meets first (no MASTER_ADDR, a rank that never comes) as one-line errors.
set -euo pipefail
source "$(dirname "$0")/cli_test_lib.sh"
MINITRON=$1
WORK=$2
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
# Two processes share the machine's cores: one OpenMP thread each, as torchrun sets for several
# processes per node (threads spinning while their process waits for the other slow both ~20x).
export OMP_NUM_THREADS=1

small_training_run "$OLDPWD"

train() {  # train OUT [extra flags]; the launcher's variables come from the caller's environment
  local out=$1; shift
  timeout 300 "$MINITRON" train --device cpu --config config.json --tokenizer tok/tokenizer.json \
    --data 'shards/austen_train_*.bin' --validation-data shards/austen_val_000000.bin --eval-windows 4 \
    --output "$out" --batch-size 1 --sequence-length 32 --steps 4 --learning-rate 3e-3 --warmup-steps 1 \
    --save-dtype float32 "$@"
}

# One process, two micro-batches per step.
train single --grad-accumulation 2 > single.log

# Two processes, one micro-batch each; rank 1 is pointed at its own --output to show it writes
# nothing (in a real run every rank gets the same flags).
port=$(free_port)
RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port train parallel > rank0.log 2> rank0.err &
rank0=$!
RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port train parallel-rank1 > rank1.log 2> rank1.err &
rank1=$!
wait $rank0 || { cat rank0.log rank0.err rank1.err; fail "rank 0 failed"; }
wait $rank1 || { cat rank1.err; fail "rank 1 failed"; }
grep -q "data-parallel training: 2 processes" rank0.log || { cat rank0.log; fail "rank 0 did not announce the run"; }
[ ! -s rank1.log ] || { cat rank1.log; fail "rank 1 printed to stdout"; }
[ ! -s rank1.err ] || { cat rank1.err; fail "rank 1 printed errors"; }
[ ! -e parallel-rank1 ] || fail "rank 1 created its --output"
[ -f parallel/model/model.safetensors ] || fail "rank 0 saved no model"

# Rank 0 logs the loss averaged over ranks: what the single process logs, up to the order in
# which the two micro-batches' fp32 gradients were summed (~1e-7 relative per weight, passed on
# through 4 Adam steps at learning rate 3e-3): 1e-4 relative is far above that and far below
# what a wrong window or a missing gradient sum would change (~1e-2).
python3 - single/metrics.jsonl parallel/metrics.jsonl <<'PY' || fail "the two-rank run does not match one process with --grad-accumulation 2"
import json, sys
def records(path, key):
    return [r for r in map(json.loads, open(path)) if key in r]
single, parallel = (records(p, "loss") for p in sys.argv[1:3])
assert [r["step"] for r in single] == [1, 2, 3, 4] == [r["step"] for r in parallel], (single, parallel)
for a, b in zip(single, parallel):
    assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (a["step"], a["loss"], b["loss"])
    assert abs(a["grad_norm"] - b["grad_norm"]) <= 1e-3 * abs(a["grad_norm"]), (a["step"], a["grad_norm"], b["grad_norm"])
va, vb = (records(p, "validation_loss")[-1]["validation_loss"] for p in sys.argv[1:3])
assert abs(va - vb) <= 1e-4 * abs(va), (va, vb)
PY

# Several processes default to ZeRO stage 2 (gradients sharded, reduced in buckets during
# backward); --zero-stage 1 trains to the same losses, gradient norms and weights, to the bit
# (one micro-batch per step: the same sums in the same rank order).
grep -q "^ZeRO stage 2: gradients sharded over 2 ranks" rank0.log || { cat rank0.log; fail "no ZeRO-2 by default"; }
port=$(free_port)
RANK=0 WORLD_SIZE=2 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port train zero1 --zero-stage 1 > zero1.log 2>&1 &
rank0=$!
RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port train zero1-rank1 --zero-stage 1 > /dev/null 2>&1 &
rank1=$!
wait $rank0 || { cat zero1.log; fail "--zero-stage 1: rank 0 failed"; }
wait $rank1 || fail "--zero-stage 1: rank 1 failed"
! grep -q "ZeRO stage 2" zero1.log || fail "--zero-stage 1 ran stage 2"
python3 - zero1/metrics.jsonl parallel/metrics.jsonl <<'PY' || fail "--zero-stage 1 and 2 differ"
import json, sys
one, two = ([(r["loss"], r["grad_norm"]) for r in map(json.loads, open(p)) if "loss" in r] for p in sys.argv[1:3])
assert len(one) == 4 and one == two, (one, two)
PY
cmp zero1/model/model.safetensors parallel/model/model.safetensors || fail "--zero-stage 1 and 2 saved different weights"
if train bad-stage --zero-stage 3 > err.out 2>&1; then fail "--zero-stage 3 accepted"; fi
grep -qx "minitron: error: --zero-stage: 3 (expected 1 (optimizer state sharded) or 2 (gradients too); stage 3 (weights sharded) is not implemented)" err.out \
  || { cat err.out; fail "--zero-stage 3: wrong message"; }

# Bad launches: one line on stderr, a non-zero exit, nothing written.
expect_launch_error() {  # expect_launch_error PATTERN OUT, the launcher's variables from the caller
  local pattern=$1 out=$2
  if train "$out" > err.out 2>&1; then fail "expected failure ($pattern)"; fi
  [ "$(wc -l < err.out)" -eq 1 ] || { cat err.out; fail "not a one-line error: $pattern"; }
  grep -q "^minitron: error: .*$pattern" err.out || { cat err.out; fail "message lacks '$pattern'"; }
  [ ! -e "$out" ] || fail "a failed launch created $out"
}
RANK=0 WORLD_SIZE=2 expect_launch_error "MASTER_ADDR: not set, but WORLD_SIZE=2 asks for several processes" no-master
port=$(free_port)
start=$(date +%s)
RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port MINITRON_DISTRIBUTED_TIMEOUT=1 \
  expect_launch_error "127.0.0.1:$port: 1 of 2 ranks joined within 1 s .*missing rank(s) 1" lone-rank0
RANK=1 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=$port MINITRON_DISTRIBUTED_TIMEOUT=1 \
  expect_launch_error "rank 1 connecting to rank 0 at MASTER_ADDR:MASTER_PORT = 127.0.0.1:$port: no connection within 1 s" lone-rank1
[ $(( $(date +%s) - start )) -lt 30 ] || fail "lone ranks took more than 30 s to give up with a 1 s timeout"

# A one-process command under a multi-process launch refuses before it reads anything, rather
# than have every rank write the same files; a batch script's own Slurm variables are no launch.
if SLURM_STEP_NUM_TASKS=4 SLURM_PROCID=2 "$MINITRON" generate --model parallel/model --prompt x \
    > generate.out 2>&1; then fail "generate under a 4-process launch succeeded"; fi
grep -qx "minitron: error: minitron generate: launched as 4 processes (WORLD_SIZE or SLURM_STEP_NUM_TASKS) (expected one process: train, sft, correct, distill and eval (--task, --suite) are the data-parallel commands)" generate.out \
  || { cat generate.out; fail "generate under a 4-process launch: wrong message"; }
# eval runs data-parallel for tasks (tests/eval/test_eval_generation_cli.sh), not for perplexity.
if SLURM_STEP_NUM_TASKS=4 SLURM_PROCID=2 "$MINITRON" eval --model parallel/model --data shards/austen_val_000000.bin \
    > eval.out 2>&1; then fail "eval --data under a 4-process launch succeeded"; fi
grep -qx "minitron: error: minitron eval --data: launched as several processes (expected one process for perplexity (--task and --suite evaluate data-parallel))" eval.out \
  || { cat eval.out; fail "eval --data under a 4-process launch: wrong message"; }
SLURM_NTASKS=4 SLURM_PROCID=0 "$MINITRON" eval --model parallel/model --data shards/austen_val_000000.bin --sequence-length 32 > eval.out 2>&1 \
  || { cat eval.out; fail "eval in a batch script's environment (SLURM_NTASKS, no job step) was refused"; }

# PyTorch's launcher (torchrun's agent, where /usr/bin/python3 has torch): the agent serves its
# own store on the master port, so rank 0 must listen elsewhere.
if /usr/bin/python3 -c "import torch.distributed.launcher.api" 2>/dev/null; then
  OMP_NUM_THREADS=1 timeout 300 /usr/bin/python3 "$OLDPWD/tests/cli/elastic_launch.py" 2 "$(free_port)" "$MINITRON" train --device cpu --config config.json --tokenizer tok/tokenizer.json \
    --data 'shards/austen_train_*.bin' --output torchrun --batch-size 1 --sequence-length 32 --steps 4 \
    --learning-rate 3e-3 --warmup-steps 1 --save-dtype float32 > torchrun.log 2>&1 \
    || { cat torchrun.log; fail "two ranks under torchrun failed"; }
  python3 - single/metrics.jsonl torchrun/metrics.jsonl <<'PY' || fail "the torchrun run does not match one process with --grad-accumulation 2"
import json, sys
single, launched = ([r["loss"] for r in map(json.loads, open(p)) if "loss" in r] for p in sys.argv[1:3])
assert len(single) == len(launched) == 4, (single, launched)
# The same tolerance and reason as for the two hand-launched ranks above.
assert all(abs(a - b) <= 1e-4 * abs(a) for a, b in zip(single, launched)), (single, launched)
PY
else
  echo "note: /usr/bin/python3 has no torch; the torchrun launch was not tried"
fi
echo "ok"
