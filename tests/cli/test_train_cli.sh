#!/usr/bin/env bash
# tokenizer train -> tokenize -> train (random init) -> resume bit-exactly -> eval -> info,
# plus the errors a user meets first.
set -euo pipefail
source "$(dirname "$0")/cli_test_lib.sh"
MINITRON=$1
WORK=$2
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"

# A small English text from the embedded corpus.
xz -dc "$OLDPWD/data/corpora/austen.txt.xz" > austen.txt && head -c 400000 austen.txt > text.txt
"$MINITRON" tokenizer train --vocab-size 512 --input text.txt --output tok >/dev/null
"$MINITRON" tokenize --tokenizer tok/tokenizer.json --input text.txt --output-prefix shards/austen \
  --validation-tokens 4000 --split-blank-lines >/dev/null 2>&1
ls shards/austen_val_000000.bin shards/austen_train_000000.bin >/dev/null

cat > config.json <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
 "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
 "max_position_embeddings": 256, "tie_word_embeddings": false, "hidden_act": "silu",
 "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32"}
JSON

train() {  # train OUT STEPS [extra flags]
  train_config config.json "$@"
}
train_config() {  # train_config CONFIG OUT STEPS [extra flags]
  local config=$1 out=$2 steps=$3; shift 3
  "$MINITRON" train --config "$config" --tokenizer tok/tokenizer.json --data 'shards/austen_train_*.bin' \
    --validation-data shards/austen_val_000000.bin --output "$out" --batch-size 4 --sequence-length 32 \
    --steps "$steps" --learning-rate 3e-3 --min-learning-rate 3e-4 --warmup-steps 2 --save-dtype float32 "$@"
}
train full 8 --save-interval 4 > full.log
grep -q "validation loss" full.log || fail "no validation loss printed"
[ -f full/model/config.json ] && [ -f full/model/model.safetensors ] && [ -f full/model/tokenizer.json ] \
  || fail "final model incomplete"
[ -f full/checkpoint-4/training_state.json ] || fail "no checkpoint at step 4"
first=$(grep -m1 "^step 1/8" full.log | sed 's/.*cross_entropy \([0-9.]*\).*/\1/')
last=$(grep "^step 8/8" full.log | sed 's/.*cross_entropy \([0-9.]*\).*/\1/')
python3 -c "import sys; a,b=map(float,sys.argv[1:]); sys.exit(0 if b < a else 1)" "$first" "$last" \
  || fail "loss did not decrease ($first -> $last)"

# Resume: a copy of the run stopped after step 4 continues to the same losses, to the bit.
mkdir resumed && cp -r full/checkpoint-4 resumed/
train resumed 8 --save-interval 4 --resume > resumed.log
grep -q "resuming from" resumed.log || fail "did not resume"
diff <(grep -E "^step [5-8]/8" full.log | sed 's/ | [0-9]* tok\/s.*//') \
     <(grep -E "^step [5-8]/8" resumed.log | sed 's/ | [0-9]* tok\/s.*//') || fail "resumed losses differ"

# --recompute full trains to the same losses, to the bit; --save-total-limit 1 keeps only the
# newest checkpoint, and a temporary left by a killed save is gone at the next start.
mkdir limited && mkdir limited/.checkpoint-3.tmp-999999 && touch limited/.checkpoint-3.tmp-999999/config.json
train limited 8 --save-interval 2 --save-total-limit 1 --recompute full > limited.log
grep -q "activation recomputation full" limited.log || fail "no recomputation line"
diff <(grep -E "^step [1-8]/8" full.log | sed 's/ | [0-9]* tok\/s.*//') \
     <(grep -E "^step [1-8]/8" limited.log | sed 's/ | [0-9]* tok\/s.*//') || fail "--recompute full changed the losses"
[ "$(cd limited && ls -A | tr '\n' ' ')" = "checkpoint-6 metrics.jsonl model " ] || { ls -A limited; fail "--save-total-limit 1 kept $(ls -A limited)"; }

# distill takes --recompute for the student alone (the teacher only infers): the same losses.
for mode in none selective; do
  "$MINITRON" distill --teacher full/model --student full/checkpoint-4 --data 'shards/austen_train_*.bin' \
    --output "distilled-$mode" --batch-size 4 --sequence-length 32 --steps 3 --warmup-steps 1 --recompute "$mode" \
    > "distilled-$mode.log"
done
grep -q "activation recomputation selective" distilled-selective.log || fail "distill printed no recomputation line"
diff <(grep -E "^step [1-3]/3" distilled-none.log | sed 's/ | [0-9]* tok\/s.*//') \
     <(grep -E "^step [1-3]/3" distilled-selective.log | sed 's/ | [0-9]* tok\/s.*//') \
  || fail "distill --recompute selective changed the losses"

# --document-boundaries: `minitron tokenize` starts every document with the tokenizer's BOS (id 510
# here), so with a config naming it, bos packs the windows' documents (attention inside each,
# positions restarting at each BOS) in training and validation: other losses than none's, which
# in turn are the flag's default, to the bit. distill takes the flag too (teacher and student
# read the same documents).
sed 's/"bos_token_id": 0/"bos_token_id": 510/' config.json > config_bos.json
train_config config_bos.json docs-none 3 --document-boundaries none > docs-none.log
train_config config_bos.json docs-default 3 > docs-default.log
train_config config_bos.json docs-bos 3 --document-boundaries bos > docs-bos.log
steps() { grep -E "^step [1-3]/3|^step [0-9]+ [|] validation loss" "$1" | sed 's/ | [0-9]* tok\/s.*//'; }
diff <(steps docs-none.log) <(steps docs-default.log) || fail "--document-boundaries none changed the losses"
[ "$(steps docs-none.log)" != "$(steps docs-bos.log)" ] || fail "--document-boundaries bos changed nothing"
grep -q "validation loss" docs-bos.log || fail "no validation loss with --document-boundaries bos"
"$MINITRON" distill --teacher docs-bos/model --student docs-bos/model --data 'shards/austen_train_*.bin' \
  --output distilled-docs --batch-size 4 --sequence-length 32 --steps 2 --warmup-steps 1 \
  --document-boundaries bos > distilled-docs.log
grep -q "^step 2/2" distilled-docs.log || fail "distill --document-boundaries bos did not train"
# A model without the token the flag names (null; absent means HF's default 2) is refused (below).
python3 -c "import json; c=json.load(open('config.json')); c['eos_token_id'] = None; json.dump(c, open('config_noeos.json', 'w'))"

# eval --json on the saved model.
"$MINITRON" eval --model full/model --data shards/austen_val_000000.bin --sequence-length 32 --json > eval.json
python3 -c "import json; r=json.load(open('eval.json')); assert r['tokens'] > 0 and r['loss'] > 0 and abs(r['perplexity'] - __import__('math').exp(r['loss'])) < 1e-6 * r['perplexity'], r"
"$MINITRON" info --model full/model > info.txt
grep -qi "parameters" info.txt || fail "info printed no parameter count"

# --min-learning-rate is range-checked only when given: a small --learning-rate alone works
# (train lowers its 1e-5 default to it; correct derives learning rate / 10). Both were refused
# with "--min-learning-rate: value 1e-05 is out of range" before.
small_lr() {  # small_lr COMMAND OUT [extra flags]
  local command=$1 out=$2; shift 2
  "$MINITRON" "$command" --data 'shards/austen_train_*.bin' --output "$out" --batch-size 4 --sequence-length 32 \
    --steps 1 --warmup-steps 0 --save-dtype float32 "$@"
}
small_lr train small-train --config config.json --learning-rate 5e-6 > small-train.log 2>&1 \
  || { cat small-train.log; fail "train --learning-rate 5e-6 was refused"; }
small_lr correct small-correct --model full/model --learning-rate 1e-6 > small-correct.log 2>&1 \
  || { cat small-correct.log; fail "correct --learning-rate 1e-6 was refused"; }
grep -q "peak learning rate 1e-06, .*; min 1e-07;" small-correct.log || { cat small-correct.log; fail "correct did not derive min = lr / 10"; }
# A given --min-learning-rate above the learning rate is still refused.
expect_min_error() {
  if small_lr train small-bad --config config.json --learning-rate 1e-6 --min-learning-rate 1e-5 > err.out 2>&1; then
    fail "train accepted --min-learning-rate above --learning-rate"
  fi
  grep -q "^minitron: error: --min-learning-rate: value 1e-05 is out of range (expected a value from 0 to 1e-06)" err.out \
    || { cat err.out; fail "unclear --min-learning-rate error"; }
}
expect_min_error

# Bad input: clear one-line errors, non-zero exit, nothing written.
expect_error "batch-size" train bad 2 --batch-size 0
expect_error "sequence-length" train bad 2 --sequence-length 100000
expect_error "save-dtype" train bad 2 --save-dtype float8
expect_error "--recompute: 'partial' (expected none, selective or full)" train bad 2 --recompute partial
expect_error "save-total-limit" train bad 2 --save-total-limit -1
expect_error "--document-boundaries: 'eod' (expected none, eos or bos)" train bad 2 --document-boundaries eod
expect_error "--document-boundaries eos: a random init of config_noeos.json has no eos_token_id in its config.json" \
  train_config config_noeos.json bad 2 --document-boundaries eos
expect_error "no-such" "$MINITRON" eval --model no-such-dir --data shards/austen_val_000000.bin
head -c 100 shards/austen_val_000000.bin > truncated.bin
expect_error "truncated.bin" "$MINITRON" eval --model full/model --data truncated.bin
[ ! -e bad ] || [ -z "$(ls bad/model 2>/dev/null)" ] || fail "a failed run left a model behind"
