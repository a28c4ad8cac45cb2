#!/usr/bin/env bash
# Instruction tuning end to end: tokenize --chat (TRL's conversational and prompt-completion
# JSONL) -> SFT shards -> sft (loss goes down, resume to the bit) -> distill on SFT shards ->
# generate --chat (--user turns, --messages, piped --interactive turns, stop ids), plus the
# refusals a user meets first.
set -euo pipefail
source "$(dirname "$0")/cli_test_lib.sh"
MINITRON=$1
WORK=$2
SOURCE=$PWD
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"

# A byte-level tokenizer with ChatML's special tokens, and a tokenizer_config.json with the ChatML template.
xz -dc "$SOURCE/data/corpora/austen.txt.xz" > austen.txt && head -c 200000 austen.txt > text.txt
"$MINITRON" tokenizer train --vocab-size 512 --input text.txt --output tok \
  --special-tokens '<|im_start|>' --special-tokens '<|im_end|>' > /dev/null
python3 - "$SOURCE" <<'PY'
import json, sys
source = sys.argv[1]
config = json.load(open("tok/tokenizer_config.json"))
config["chat_template"] = open(f"{source}/tests/data/chat_templates/chatml.jinja").read()
json.dump(config, open("tok/tokenizer_config.json", "w"))
# Conversations from the text: the user gives a line, the assistant answers with the next one.
lines = [l.strip() for l in open("text.txt") if len(l.strip()) > 20][:400]
with open("chat.jsonl", "w") as out:
    for i in range(0, len(lines) - 1, 2):
        if i % 6 == 4:
            out.write(json.dumps({"prompt": [{"role": "user", "content": lines[i]}],
                                  "completion": [{"role": "assistant", "content": lines[i + 1]}]}) + "\n")
        else:
            out.write(json.dumps({"messages": [{"role": "system", "content": "Continue the story."},
                                               {"role": "user", "content": lines[i]},
                                               {"role": "assistant", "content": lines[i + 1]}]}) + "\n")
good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
open("bad_role.jsonl", "w").write(good + "\n" + good + "\n" + json.dumps({"messages": [{"content": "x"}]}) + "\n")
open("bad_first.jsonl", "w").write(good + "\n\n" + json.dumps({"messages": [{"role": "assistant", "content": "x"}]}) + "\n")
open("bad_content.jsonl", "w").write(json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}) + "\n")
json.dump([{"role": "user", "content": "Once upon a time"}], open("messages.json", "w"))
PY

# tokenize --chat: SFT shards (validation first), a summary with the trained-token count.
"$MINITRON" tokenize --chat --tokenizer tok/tokenizer.json --input chat.jsonl --output-prefix sft/chat \
  --validation-tokens 3000 --shard-tokens 20000 > tokenize.log
grep -q "tokenized 200 conversations into [0-9]* tokens, [0-9]* of them trained" tokenize.log \
  || { cat tokenize.log; fail "tokenize --chat summary"; }
ls sft/chat_val_000000.bin sft/chat_train_000000.bin sft/chat_train_000001.bin > /dev/null
python3 - <<'PY' || fail "SFT shard header"
import struct
data = open("sft/chat_train_000000.bin", "rb").read()
magic, version, n, d = struct.unpack("<4i", data[:16])
assert (magic, version) == (20261205, 1), (magic, version)
assert len(data) == 1024 + 4 * n + 4 * d + n, (len(data), n, d)
mask = data[1024 + 4 * n + 4 * d:]
assert set(mask) == {0, 1} and 0 < sum(mask) < n, sum(mask)
PY
# --train-on-prompt counts every token.
"$MINITRON" tokenize --chat --train-on-prompt --tokenizer tok/tokenizer.json --input chat.jsonl \
  --output-prefix all/chat > all.log
grep -q "into \([0-9]*\) tokens, \1 of them trained" all.log || { cat all.log; fail "--train-on-prompt"; }

# Bad lines are refused with their line number, and nothing is written.
expect_error "bad_role.jsonl line 3: messages\[0\].role is missing" \
  "$MINITRON" tokenize --chat --tokenizer tok/tokenizer.json --input bad_role.jsonl --output-prefix bad/x
expect_error "bad_first.jsonl line 3: message 0 is an assistant turn before any user turn" \
  "$MINITRON" tokenize --chat --tokenizer tok/tokenizer.json --input bad_first.jsonl --output-prefix bad/x
expect_error "bad_content.jsonl line 1: messages\[0\].content is 5 (expected a content string)" \
  "$MINITRON" tokenize --chat --tokenizer tok/tokenizer.json --input bad_content.jsonl --output-prefix bad/x
[ ! -e bad ] || fail "a refused input wrote $(ls bad)"
expect_error "--train-on-prompt: given without --chat" \
  "$MINITRON" tokenize --train-on-prompt --tokenizer tok/tokenizer.json --input text.txt --output-prefix bad/x

cat > config.json <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 512,
 "hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
 "num_key_value_heads": 2, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
 "max_position_embeddings": 256, "tie_word_embeddings": false, "hidden_act": "silu",
 "bos_token_id": 508, "eos_token_id": 509, "torch_dtype": "float32"}
JSON

sft() {  # sft OUT STEPS [extra flags]
  local out=$1 steps=$2; shift 2
  "$MINITRON" sft --config config.json --tokenizer tok/tokenizer.json --data 'sft/chat_train_*.bin' \
    --validation-data sft/chat_val_000000.bin --output "$out" --batch-size 4 --sequence-length 64 \
    --steps "$steps" --learning-rate 3e-3 --min-learning-rate 3e-4 --warmup-steps 2 --save-dtype float32 "$@"
}
sft full 12 --save-interval 6 --grad-accumulation 2 > full.log
grep -q "validation loss" full.log || fail "no validation loss"
first=$(grep -m1 "^step 1/12" full.log | sed 's/.*cross_entropy \([0-9.]*\).*/\1/')
last=$(grep "^step 12/12" full.log | sed 's/.*cross_entropy \([0-9.]*\).*/\1/')
python3 -c "import sys; a,b=map(float,sys.argv[1:]); sys.exit(0 if b < a - 0.5 else 1)" "$first" "$last" \
  || fail "loss did not go down ($first -> $last)"
# eval on an SFT shard counts the unmasked targets only: the same loss and count as sft's validation.
"$MINITRON" eval --model full/model --data sft/chat_val_000000.bin --sequence-length 64 --device cpu > eval.log 2>/dev/null
validation=$(grep "^step 12 | validation loss" full.log | sed 's/.*validation loss \([0-9.]*\) .* \([0-9]*\) tokens/\1 \2/')
evaluated=$(grep "^loss" eval.log | sed 's/loss \([0-9.]*\) nats.* \([0-9]*\) tokens in .*/\1 \2/')
[ "$validation" = "$evaluated" ] || fail "eval on the SFT validation shard ($evaluated) differs from sft's ($validation)"
python3 -c "import struct,sys; d=open('sft/chat_val_000000.bin','rb').read(); n=struct.unpack('<i',d[8:12])[0]; sys.exit(0 if int(sys.argv[1]) < n - 64 else 1)" \
  "${evaluated#* }" || fail "eval counted every token of the SFT shard"
# Resume continues to the same losses, to the bit.
mkdir resumed && cp -r full/checkpoint-6 resumed/
sft resumed 12 --save-interval 6 --grad-accumulation 2 --resume > resumed.log
grep -q "resuming from" resumed.log || fail "did not resume"
diff <(grep -E "^step ([7-9]|1[0-2])/12" full.log | sed 's/ | [0-9]* tok\/s.*//') \
     <(grep -E "^step ([7-9]|1[0-2])/12" resumed.log | sed 's/ | [0-9]* tok\/s.*//') || fail "resumed losses differ"
# --recompute full: the same losses, to the bit.
sft recomputed 3 --grad-accumulation 2 --recompute full > recomputed.log
diff <(grep -E "^step [1-3]/3" recomputed.log | sed 's/ | [0-9]* tok\/s.*//') \
     <(sft plain3 3 --grad-accumulation 2 | grep -E "^step [1-3]/3" | sed 's/ | [0-9]* tok\/s.*//') \
  || fail "--recompute full changed the losses"

# Shard kinds do not cross: train refuses SFT shards, sft token shards.
"$MINITRON" tokenize --tokenizer tok/tokenizer.json --input text.txt --output-prefix plain/text > /dev/null
expect_error "chat_train_000000.bin: it is an SFT shard .* train SFT shards with minitron sft" \
  "$MINITRON" train --config config.json --data 'sft/chat_train_*.bin' --output refused --steps 1 \
  --batch-size 1 --sequence-length 32
expect_error "text_train_000000.bin: it is a token shard without a loss mask .*SFT shards from minitron tokenize --chat" \
  sft refused 1 --data plain/text_train_000000.bin

# distill on SFT shards: the KL on response tokens only.
"$MINITRON" distill --teacher full/model --student full/checkpoint-6 --data 'sft/chat_train_*.bin' \
  --output distilled --batch-size 4 --sequence-length 64 --steps 2 --warmup-steps 1 > distill.log
grep -q "the KL counts the response tokens only" distill.log || fail "distill did not see SFT shards"
grep -q "^step 2/2 | kl [0-9.]*" distill.log || { cat distill.log; fail "distill on SFT shards"; }
expect_error "--intermediate-loss-weight: given with SFT shards" \
  "$MINITRON" distill --teacher full/model --student full/checkpoint-6 --data 'sft/chat_train_*.bin' \
  --output distilled2 --steps 1 --intermediate-loss-weight 1

# generate --chat: each --user turn answered in order (greedy: the same replies as the same
# turns piped to --interactive), a --messages conversation answered.
chat() { "$MINITRON" generate --chat --model full/model --tokenizer-config tok/tokenizer_config.json --device cpu "$@"; }
chat --user "It was a fine day" --user "And then?" --max-new-tokens 8 > turns.txt
[ "$(wc -l < turns.txt)" -eq 2 ] || { cat turns.txt; fail "two turns should give two reply lines"; }
printf 'It was a fine day\nAnd then?\n' | chat --interactive --max-new-tokens 8 > piped.txt
cmp turns.txt piped.txt || { diff turns.txt piped.txt; fail "piped --interactive turns differ from --user turns"; }
chat --messages messages.json --max-new-tokens 4 > messages.txt
[ "$(wc -l < messages.txt)" -eq 1 ] || fail "--messages: $(cat messages.txt)"
# generation_config.json's eos ids stop a reply: with every id an EOS, each reply is empty
# (the stop token is not printed); --ignore-eos generates again.
cp -r full/model stopmodel
python3 -c 'import json; json.dump({"eos_token_id": list(range(512))}, open("stopmodel/generation_config.json", "w"))'
"$MINITRON" generate --chat --model stopmodel --tokenizer-config tok/tokenizer_config.json --device cpu \
  --user "It was a fine day" --max-new-tokens 8 > stopped.txt
[ "$(cat stopped.txt)" = "" ] && [ "$(wc -l < stopped.txt)" -eq 1 ] || fail "generation_config eos did not stop: $(cat stopped.txt)"
"$MINITRON" generate --chat --model stopmodel --tokenizer-config tok/tokenizer_config.json --device cpu \
  --user "It was a fine day" --max-new-tokens 8 --ignore-eos > ignored.txt
[ -n "$(cat ignored.txt)" ] || fail "--ignore-eos gave nothing"
expect_error "generate --chat: no user turn to answer" chat --system "Be brief." < /dev/null
python3 -c 'import json; json.dump([{"role": "system", "content": "S"}, {"role": "user", "content": "u"}], open("with_system.json", "w"))'
expect_error "--system: given, but --messages begins with a system message" chat --messages with_system.json --system T
expect_error "--user: given without --chat" \
  "$MINITRON" generate --model full/model --prompt x --user y --device cpu
expect_error "--prompt: given with --chat" chat --prompt x --user y
echo '{"eos_token_id": "x"}' > stopmodel/generation_config.json
expect_error "generation_config.json: eos_token_id is \"x\"" \
  "$MINITRON" generate --chat --model stopmodel --tokenizer-config tok/tokenizer_config.json --device cpu --user hi
echo PASS
