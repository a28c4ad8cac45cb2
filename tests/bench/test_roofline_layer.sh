#!/usr/bin/env bash
# bench/roofline/roofline_layer end to end at the tiny shape (a few seconds): the report says its
# times are predictions, the cuBLASLt calls' flops are the step's 6 x tokens x matmul weights
# (computed here from the shape, not by the tool), each call moves exactly its ideal bytes, the
# kernels' counts are consistent (distinct bytes never above the bytes counted, up to 32-byte
# sector rounding), the attention forward's ldmatrix and mma.sync counts are those worked out by
# hand below, the markdown and JSONL files are written, and bad flags fail with a message.
# Usage: test_roofline_layer.sh ROOFLINE_LAYER PYTHON WORK_DIR
set -euo pipefail
tool=$1 python=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$tool" --shape tiny --sequence 48 --markdown "$work/roofline.md" --jsonl "$work/launches.jsonl" \
  > "$work/stdout.md" 2> "$work/stderr.txt" || { cat "$work/stderr.txt" >&2; fail "the tiny run failed"; }
cmp -s "$work/stdout.md" "$work/roofline.md" || fail "--markdown differs from what was printed"
grep -qF "Predictions from counted traffic under emulation, not measurements." "$work/roofline.md" \
  || fail "the report does not say its times are predictions"
grep -qF "Predicted step" "$work/roofline.md" || fail "no predicted step time"

"$python" - "$work/launches.jsonl" <<'PY' || fail "the JSONL launches"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
# The tiny shape: hidden 256, 4 heads and 2 KV heads of 64, FFN 512, vocabulary 64; 48 tokens.
D, QD, KVD, F, V, T = 256, 4 * 64, 2 * 64, 512, 64, 48
weights = D * (QD + 2 * KVD) + QD * D + 3 * D * F + V * D
gemms = [r for r in rows if r["library_call"]]
# Forward 2 flops per weight and token, backward 4 (input and weight gradients).
assert sum(r["flops"] for r in gemms) == 6 * T * weights, (sum(r["flops"] for r in gemms), 6 * T * weights)
for r in gemms:
    assert (r["bytes_read"], r["bytes_written"]) == (r["distinct_bytes_read"], r["distinct_bytes_written"]), r
kernels = [r for r in rows if not r["library_call"]]
assert len(kernels) >= 10, len(kernels)
for r in kernels:
    assert r["blocks"] > 0, r
    # Sector rounding can add under 32 bytes per contiguous run; a run per block at most.
    slack = 64 * r["blocks"] + 64
    assert r["distinct_bytes_read"] <= r["bytes_read"] + slack, r
    assert r["distinct_bytes_written"] <= r["bytes_written"] + slack, r
# Every kernel of a training step touches global memory; the attention kernels do tensor-core work.
assert all(r["bytes_read"] + r["bytes_written"] > 0 for r in kernels), kernels
assert any(r["flops"] > 0 and "attention_forward" in r["kernel"] for r in kernels), kernels
# The tensor-core forward at head_dim 64 over 48 tokens, by hand: one 128-row block per head.
# Each of its 4 warps loads its Q fragments once (2 slices x 4 k-chunks = 8 ldmatrix); the two
# with rows below 48 then work on the single 64-key tile: K (4 k-chunks x 4 key pairs) and V (4
# key chunks x 4 dim pairs), 32 ldmatrix, feeding 64 QK^T and 64 PV mma.sync.
forward = [r for r in kernels if r["kernel"].startswith("attention_forward_mma_kernel")]
assert len(forward) == 1, forward
assert forward[0]["ldmatrix"] == 4 * (4 * 8 + 2 * 32), forward
assert forward[0]["flops"] == 4 * 2 * 128 * 4096, forward
PY

# Bad flags: a one-line error naming the flag and what was expected, non-zero exit.
for flags in "--sequence 0" "--sequence 5000" "--shape huge"; do
  rc=0
  # shellcheck disable=SC2086
  "$tool" $flags > /dev/null 2> "$work/error.txt" || rc=$?
  [[ $rc -ne 0 ]] || fail "$flags should fail"
  grep -q "expected" "$work/error.txt" || fail "$flags: no clear error: $(cat "$work/error.txt")"
done
echo "roofline_layer checks passed"
