#!/usr/bin/env bash
# minitron plan: a train and a distill command line (models as config.json-only directories, no
# weights), the paper recipes on 8 x 80 GiB, JSON that adds up, and the bad input it refuses.
set -euo pipefail
MINITRON=$1
WORK=$2
SOURCE=$PWD
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
fail() { echo "FAIL: $*" >&2; exit 1; }

mkdir -p teacher student
cat > teacher/config.json <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
 "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 4, "num_attention_heads": 4,
 "num_key_value_heads": 2, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
 "max_position_embeddings": 256, "tie_word_embeddings": false, "hidden_act": "silu",
 "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32"}
JSON
sed 's/"num_hidden_layers": 4/"num_hidden_layers": 2/' teacher/config.json > student/config.json

# A train command line, as train takes it (--data and --output are accepted, not read).
"$MINITRON" plan train --model teacher --data 'none_*.bin' --output run --batch-size 4 --sequence-length 128 \
  --recompute selective > train.txt
grep -q "^saved activations" train.txt || fail "no saved-activations row"
grep -q "^fits  *yes" train.txt || fail "a tiny model does not fit 80 GiB"

# JSON: the parts add up to the peak, and the recompute mode changes the saved activations.
"$MINITRON" plan train --model teacher --batch-size 4 --sequence-length 128 --json > none.json
"$MINITRON" plan train --model teacher --batch-size 4 --sequence-length 128 --recompute full --json > full.json
python3 - <<'PY' || fail "plan JSON inconsistent"
import json
none, full = json.load(open("none.json")), json.load(open("full.json"))
step = none["steps"][0]
assert step["step"] == "train" and step["gpus"] == 1 and step["zero_stage"] == 1, step
assert sum(step["parts"].values()) == step["peak"], step
# 5 residual streams of 4 x 128 x 64 bf16 values are all that full recomputation keeps.
assert full["steps"][0]["parts"]["saved activations"] == 5 * 4 * 128 * 64 * 2, full
assert step["parts"]["saved activations"] > full["steps"][0]["parts"]["saved activations"]
assert step["fits"] is True
# Host memory beside the device's, not in the peak: the streamed load's 2^22-value fp32 chunk and
# its bf16 rounding, and rank 0's gather of the fp32 weights and both moments at a checkpoint
# (P = 2 x 512 x 64 + 4 x (2 x 64 x 64 + 2 x 64 x 32 + 3 x 64 x 160 + 2 x 64) + 64 = 238,144).
assert step["host"] == {"load staging": (1 << 22) * 6, "rank 0 checkpoint": 3 * 4 * 238144}, step
PY
grep -q "^host: load staging  *24.0 MiB" train.txt || fail "no host staging row"

# A distill command line: the teacher's part appears, and more GPUs shrink the optimizer share.
"$MINITRON" plan distill --teacher teacher --student student --sequence-length 128 --gpus 2 --json > distill.json
python3 - <<'PY' || fail "distill plan JSON inconsistent"
import json
step = json.load(open("distill.json"))["steps"][0]
assert step["parts"]["teacher"] > 0 and step["gpus"] == 2, step
PY

# ZeRO stage: 2 by default on several GPUs, where the gradient part is this rank's share (plus
# the bucket slots under communication); --zero-stage 1 keeps the whole gradient.
"$MINITRON" plan train --model teacher --sequence-length 128 --gpus 2 --json > zero2.json
"$MINITRON" plan train --model teacher --sequence-length 128 --gpus 2 --zero-stage 1 --json > zero1.json
python3 - <<'PY' || fail "zero-stage plan JSON inconsistent"
import json
two, one = json.load(open("zero2.json"))["steps"][0], json.load(open("zero1.json"))["steps"][0]
assert two["zero_stage"] == 2 and one["zero_stage"] == 1, (two, one)
# 4 layers of 64 + 64*64 + 2*32*64 + 64*64 + 64 + 3*160*64 = 43,136, two 512 x 64 tables and a
# norm of 64: 238,144 fp32 gradients; shard_bounds gives rank 1 of 2 the last 119,104 of them.
assert one["parts"]["gradients"] == 238144 * 4, one
assert two["parts"]["gradients"] == 119104 * 4 and two["rank"] == 1, two
# ZeRO-2's bucket arena under communication: the default buckets are the embedding (512 x 64) and
# the rest (4 layers, the norm, the head: 205,376); the largest two in a row hold all 238,144.
assert two["parts"]["communication"] - one["parts"]["communication"] == 238144 * 4, (two, one)
PY

# The paper recipes on 8 x 80 GiB: every step fits at its own sequence length (8192), with the
# recipes' zero_stage 2 and recompute modes. With ZeRO-1 forced, MN-Minitron-8B does not, and the
# plan names ZeRO-2 as the cheapest change.
for recipe in llama-3.1-minitron-4b-width:Meta-Llama-3.1-8B llama-3.1-minitron-4b-depth:Meta-Llama-3.1-8B \
  mn-minitron-8b:Mistral-NeMo-12B-Base; do
  "$MINITRON" plan --recipe "$SOURCE/recipes/${recipe%%:*}.json" --teacher "$SOURCE/recipes/configs/${recipe##*:}" \
    --gpus 8 --gpu-memory 80GiB --json > "${recipe%%:*}.json"
  python3 - "${recipe%%:*}.json" <<'PY' || fail "$recipe does not fit 8 x 80 GiB"
import json, sys
plan = json.load(open(sys.argv[1]))
assert [s["step"] for s in plan["steps"]][0] == "correct", plan
assert all(s["fits"] and s["sequence_length"] == 8192 and s["zero_stage"] == 2 for s in plan["steps"]), plan
PY
done
"$MINITRON" plan --recipe "$SOURCE/recipes/mn-minitron-8b.json" --teacher "$SOURCE/recipes/configs/Mistral-NeMo-12B-Base" \
  --gpus 8 --zero-stage 1 > mn.txt
grep -qx "correct does not fit: the cheapest change that fits is --zero-stage 2" mn.txt || fail "no ZeRO-2 named for MN"

# Bad input: one line naming the flag, non-zero exit.
refused() {  # refused FLAG ARGS...
  local flag=$1; shift
  if "$MINITRON" plan "$@" > out.txt 2> err.txt; then fail "accepted: $*"; fi
  [ "$(wc -l < err.txt)" -eq 1 ] || fail "not one line for: $* ($(cat err.txt))"
  grep -q -- "$flag" err.txt || fail "error does not name $flag: $(cat err.txt)"
}
refused --gpus train --model teacher --gpus 0
refused --gpu-memory train --model teacher --gpu-memory 80
refused --gpu-memory train --model teacher --gpu-memory abcGiB
refused --gpu-memory train --model teacher --gpu-memory 1GiB
refused --gpu-memory train --model teacher --gpu-memory -80GiB
refused --zero-stage train --model teacher --zero-stage 3
refused --zero-stage train --model teacher --zero-stage 0
refused --zero-stage --recipe "$SOURCE/recipes/demo.json" --zero-stage 3
refused --recompute train --model teacher --recompute some
refused --sequence-length train --model teacher --sequence-length 0
refused --teacher --recipe "$SOURCE/recipes/demo.json" --teacher no-such-dir
refused "minitron plan" evaluate --model teacher
echo "plan CLI: ok"
