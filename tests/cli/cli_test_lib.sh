# Sourced by the CLI test scripts: how they fail, and how they check a refusal.
fail() { echo "FAIL: $*" >&2; exit 1; }

# expect_error PATTERN command...: the command fails, with exactly one line on stderr that starts
# "minitron: error:" and holds PATTERN (a grep regex). Its output is left in out.txt and err.txt.
expect_error() {
  local pattern=$1
  shift
  if "$@" > out.txt 2> err.txt; then fail "expected failure: $*"; fi
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; fail "error is not one line: $*"; }
  grep -q "^minitron: error: .*$pattern" err.txt || { cat err.txt; fail "message lacks '$pattern'"; }
}

# free_port: a TCP port of 127.0.0.1 nothing listens on now (a MASTER_PORT for launched ranks).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# small_training_run SOURCE: in the current folder, 200 kB of the embedded corpus (text.txt), a
# 300-token BPE tokenizer (tok/), its shards (shards/austen_train_*.bin, shards/austen_val_000000.bin)
# and config.json of a 2-layer Llama with grouped KV heads: what the data-parallel tests train.
small_training_run() {
  local source=$1
  xz -dc "$source/data/corpora/austen.txt.xz" > austen.txt && head -c 200000 austen.txt > text.txt
  "$MINITRON" tokenizer train --vocab-size 300 --input text.txt --output tok > /dev/null
  "$MINITRON" tokenize --tokenizer tok/tokenizer.json --input text.txt --output-prefix shards/austen \
    --validation-tokens 2000 --split-blank-lines > /dev/null 2>&1
  cat > config.json <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 300,
 "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
 "max_position_embeddings": 64, "tie_word_embeddings": false, "hidden_act": "silu",
 "bos_token_id": 0, "eos_token_id": 1, "torch_dtype": "float32"}
JSON
}
