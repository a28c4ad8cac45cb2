#!/usr/bin/env bash
# Issue 22: every file minitron reads is untrusted. A tokenizer.json whose vocabulary gives a
# token an id beyond int32 (it used to wrap to 1 and collide with "<s>"), a fraction or a float
# too large for any integer is refused by `tokenizer encode` with one line naming the file, the
# JSON path and the range, and a non-zero exit; the same file with a valid id still encodes.
set -euo pipefail
MINITRON=$1
WORK=$2
ROOT=$PWD
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
fail() { echo "FAIL: $*" >&2; exit 1; }

with_ampersand_id() {  # with_ampersand_id ID DIR: the eval fixture's tokenizer plus "&": ID
  mkdir -p "$2"
  python3 - "$ROOT/tests/eval/data/tokenizer.json" "$1" "$2/tokenizer.json" <<'PY'
import sys
text = open(sys.argv[1]).read()
needle = '"vocab": {'
assert needle in text
open(sys.argv[3], "w").write(text.replace(needle, needle + '"&": ' + sys.argv[2] + ', ', 1))
PY
}

with_ampersand_id 67 valid
[ "$(echo -n '&&&' | "$MINITRON" tokenizer encode --tokenizer valid)" = "67 67 67" ] || fail "a valid id does not encode"

for id in 4294967297 7.5 3.3e37; do
  printed=$id
  [ "$id" = 3.3e37 ] && printed=3.3e+37
  with_ampersand_id "$id" "bad_$id"
  if echo -n '&&&' | "$MINITRON" tokenizer encode --tokenizer "bad_$id" > out.txt 2> err.txt; then
    fail "id $id was accepted: $(cat out.txt)"
  fi
  [ "$(wc -l < err.txt)" -eq 1 ] || { cat err.txt; fail "error for id $id is not one line"; }
  expected="minitron: error: bad_$id/tokenizer.json: model.vocab[\"&\"] is $printed (expected an integer from 0 to 2147483647)"
  [ "$(cat err.txt)" = "$expected" ] || { cat err.txt; fail "error for id $id is not: $expected"; }
  [ -s out.txt ] && fail "ids printed for id $id: $(cat out.txt)"
done
echo "untrusted_json: ok"
