#!/usr/bin/env bash
# `minitron tokenizer chat`: a conversation rendered by tokenizer_config.json's chat_template (a
# string or the named list), or by --chat-template FILE, printed byte for byte; the template's own
# raise_exception and a config without a template fail with one line.
set -euo pipefail
source "$(dirname "$0")/cli_test_lib.sh"
MINITRON=$1
WORK=$2
SOURCE=$PWD
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
chat() { "$MINITRON" tokenizer chat "$@"; }

python3 - "$SOURCE" <<'PY'
import json, sys
source = sys.argv[1]
chatml = open(f"{source}/tests/data/chat_templates/chatml.jinja").read()
json.dump({"bos_token": "<s>", "eos_token": "<|im_end|>", "chat_template": chatml}, open("tokenizer_config.json", "w"))
json.dump({"bos_token": {"__type": "AddedToken", "content": "<s>"}, "eos_token": "</s>",
           "chat_template": [{"name": "rag", "template": "rag"}, {"name": "default", "template": "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"}]},
          open("named_config.json", "w"))
json.dump({"bos_token": "<s>"}, open("no_template_config.json", "w"))
json.dump([{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}], open("conv.json", "w"))
json.dump({"messages": [{"role": "assistant", "content": "I speak first"}]}, open("assistant_first.json", "w"))
PY

# The checkpoint's template, exactly (no newline added), with and without the generation prompt.
chat --tokenizer-config tokenizer_config.json --conversation conv.json > plain.txt
printf '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n' > expected.txt
cmp plain.txt expected.txt || { diff plain.txt expected.txt; fail "ChatML rendering differs"; }
chat --tokenizer-config . --conversation conv.json --add-generation-prompt > prompt.txt
printf '<|im_start|>assistant\n' >> expected.txt
cmp prompt.txt expected.txt || fail "--add-generation-prompt rendering differs"

# The named list's "default" template, with the AddedToken's text as bos_token.
chat --tokenizer-config named_config.json --conversation conv.json > named.txt
[ "$(cat named.txt)" = "<s>[user] Hi there</s>[assistant] Hello!</s>" ] || fail "named template: $(cat named.txt)"

# --chat-template replaces the checkpoint's template; the config still gives BOS and EOS.
chat --tokenizer-config named_config.json --conversation conv.json \
  --chat-template "$SOURCE/tests/data/chat_templates/mistral_inst.jinja" > mistral.txt
[ "$(cat mistral.txt)" = "<s>[INST] Hi there [/INST] Hello!</s>" ] || fail "--chat-template: $(cat mistral.txt)"

# The config's other special tokens and --variables reach the template; --variables wins.
echo '{{ unk_token }} {{ additional_special_tokens | join(",") }} {{ tools | length }} {{ enable_thinking }}' > vars.jinja
echo '{"tools": [{"name": "f"}], "enable_thinking": false, "unk_token": "<override>"}' > vars.json
python3 -c 'import json; json.dump({"unk_token": "<unk>", "additional_special_tokens": ["<a>", "<b>"]}, open("special_config.json", "w"))'
chat --tokenizer-config special_config.json --chat-template vars.jinja --conversation conv.json --variables vars.json > vars.txt
[ "$(cat vars.txt)" = "<override> <a>,<b> 1 False" ] || fail "variables: $(cat vars.txt)"
echo '[1]' > list.json
expect_error "--variables list.json: is not a JSON object" chat --chat-template vars.jinja --conversation conv.json --variables list.json

# Refusals: the template's raise_exception (with its line), no template at all, a bad conversation.
expect_error "chat template line 13 column 13: the template raised an exception: After the optional system message, conversation roles must alternate" \
  chat --tokenizer-config named_config.json --conversation assistant_first.json \
  --chat-template "$SOURCE/tests/data/chat_templates/mistral_inst.jinja"
expect_error "no_template_config.json: has no chat_template" chat --tokenizer-config no_template_config.json --conversation conv.json
echo '[{"role": "user"}]' > bad_conv.json
expect_error "bad_conv.json message 0: lacks a string role or a content" chat --tokenizer-config . --conversation bad_conv.json
echo '{{ 1 | wordwrap }}' > unsupported.jinja
expect_error "chat template line 1 column 8: the filter 'wordwrap' is not supported" \
  chat --chat-template unsupported.jinja --conversation conv.json
echo "cli tokenizer chat: ok"
