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
