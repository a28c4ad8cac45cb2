#!/usr/bin/env bash
# tools/mutate_kernels.py without a build (the campaign itself takes an hour): `check` reports a
# mutant whose snippet no longer matches as stale and fails; a malformed list is refused naming
# the line and what was expected; `summarize` counts outcomes, equivalents apart.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tool="$root/tools/mutate_kernels.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat > "$work/mutants.jsonl" <<'LIST'
{"id": "eps", "family": "rmsnorm", "file": "kernels/rmsnorm.cuh", "kind": "epsilon-or-scale-dropped", "original": "rsqrtf(sum / static_cast<float>(D) + eps)", "replacement": "rsqrtf(sum / static_cast<float>(D) + 0.0f * eps)"}
{"id": "gone", "family": "rmsnorm", "file": "kernels/rmsnorm.cuh", "kind": "comparison", "original": "no such line in the kernel", "replacement": "x"}
{"id": "split", "family": "swiglu", "file": "kernels/swiglu.cuh", "kind": "vector-scalar-split", "original": "if (aligned16(h) && aligned16(gate) && aligned16(up) && swiglu_packs<T>(n, width, gate_up_stride))", "replacement": "if (false)", "equivalent": "the scalar loop computes the same values"}
LIST
if out=$(python3 "$tool" --mutants "$work/mutants.jsonl" check 2>&1); then
  echo "FAIL: check passed with a stale mutant: $out"; exit 1
fi
grep -qx "gone: stale, original snippet found 0 times in kernels/rmsnorm.cuh (needs exactly 1)" <<< "$out" ||
  { echo "FAIL: no stale line for 'gone': $out"; exit 1; }
grep -q "3 mutants, 1 stale; per family: rmsnorm 2, swiglu 1" <<< "$out" || { echo "FAIL: counts: $out"; exit 1; }

echo '{"id": "bad", "family": "x", "file": "kernels/rmsnorm.cuh", "kind": "typo", "original": "a", "replacement": "b"}' \
  > "$work/bad.jsonl"
if out=$(python3 "$tool" --mutants "$work/bad.jsonl" check 2>&1); then
  echo "FAIL: a mutant of an unknown kind was accepted"; exit 1
fi
grep -q "bad.jsonl:1: kind 'typo' is not one of barrier-removed," <<< "$out" || { echo "FAIL: message: $out"; exit 1; }

cat > "$work/results.jsonl" <<'RESULTS'
{"id": "eps", "family": "rmsnorm", "file": "kernels/rmsnorm.cuh", "kind": "epsilon-or-scale-dropped", "status": "survived", "detail": "all emulated kernel tests pass", "seconds": 20, "commit": "a", "time": "t"}
{"id": "eps", "family": "rmsnorm", "file": "kernels/rmsnorm.cuh", "kind": "epsilon-or-scale-dropped", "status": "killed", "detail": "test_cuda_kernels: RmsNormForward", "seconds": 20, "commit": "b", "time": "t"}
{"id": "gone", "family": "rmsnorm", "file": "kernels/rmsnorm.cuh", "kind": "comparison", "status": "did-not-compile", "detail": "error", "seconds": 9, "commit": "b", "time": "t"}
{"id": "split", "family": "swiglu", "file": "kernels/swiglu.cuh", "kind": "vector-scalar-split", "status": "survived", "detail": "all emulated kernel tests pass", "seconds": 20, "commit": "b", "time": "t"}
RESULTS
out=$(python3 "$tool" --mutants "$work/mutants.jsonl" --results "$work/results.jsonl" summarize)
expected="Ran 3 of 3 listed mutants: 1 killed, 0 killed by timeout, 1 survived (1 equivalent, 0 not), 1 did not compile, 0 stale."
grep -qxF "$expected" <<< "$out" || { printf 'FAIL: summary\n%s\nexpected the line\n%s\n' "$out" "$expected"; exit 1; }
grep -qF "| split | swiglu | vector-scalar-split | survived | equivalent: the scalar loop computes the same values |" <<< "$out" ||
  { echo "FAIL: the equivalent mutant's row: $out"; exit 1; }

if out=$(python3 "$tool" --mutants "$work/mutants.jsonl" run --only nope 2>&1); then
  echo "FAIL: an unknown --only id was accepted"; exit 1
fi
grep -q "no mutant with id nope" <<< "$out" || { echo "FAIL: --only message: $out"; exit 1; }
echo "mutate_kernels: stale snippets and malformed lists refused, outcomes summarized"
