#!/usr/bin/env bash
# bench/gpu_check.sh's parts that need no GPU: torch_layer.py at a tiny CPU shape, the summary
# from fake logs (missing, cut short, failed rows, no minitron row), the time budget, and the
# tarball of every log with the summary printed last.
# Usage: test_gpu_check_cpu.sh PYTHON_WITH_TORCH WORK_DIR   (exit 77: skipped, no torch)
set -euo pipefail
python=$1 work=$2
root="$(cd "$(dirname "$0")/../.." && pwd)"
"$python" -c "import torch" 2> /dev/null || { echo "skipped: $python has no torch"; exit 77; }
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAIL: $*" >&2; exit 1; }
expect() {  # expect FILE TEXT: the file holds the text (fixed string)
  grep -qF -- "$2" "$1" || { cat "$1" >&2; fail "$1 lacks: $2"; }
}
summary() {  # summary DIR: the summary of the logs in DIR
  PYTHON="$python" bash "$root/bench/gpu_check.sh" --summary "$1" > /dev/null || fail "--summary $1 failed"
}

# 1. torch_layer.py on the CPU: the eager row with every key the summary reads, then a
#    torch.compile row, measured or (PyTorch 1.13 has none) an error, and exit status 0.
"$python" "$root/bench/gpu/torch_layer.py" 2 16 97 --tiny-cpu > "$work/torch.out" 2> "$work/torch.err" \
  || { cat "$work/torch.err" >&2; fail "torch_layer.py --tiny-cpu failed"; }
"$python" - "$work/torch.out" <<'PY' || fail "torch_layer.py's JSON rows"
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
assert [r["engine"] for r in rows] == ["torch eager", "torch.compile"], rows
eager = rows[0]
for key in ("step_ms", "tokens_per_second", "mfu", "loss"):
    assert isinstance(eager[key], (int, float)) and math.isfinite(eager[key]), (key, eager)
assert (eager["layers"], eager["tokens"], eager["vocab"]) == (2, 16, 97), eager
assert "error" in rows[1] or "tokens_per_second" in rows[1], rows[1]
PY

# 2. Summary without any log: the table says there are no results.
mkdir "$work/empty"
summary "$work/empty"
expect "$work/empty/gpu_check.md" "| (no results: see layer_step.log and torch_layer.log) |"

# 3. Summary with every row: ratios minitron / this (2000 / 1000 and 2000 / 4000 tokens/s), a
#    failed torch.compile, a line cut short by a time limit, a stray non-JSON line.
mkdir "$work/full"
echo '{"engine": "minitron", "layers": 2, "tokens": 4096, "vocab": 32000, "step_ms": 2048.0, "tokens_per_second": 2000.0, "mfu": 0.4321, "loss": 10.5}' > "$work/full/layer_step.log"
{
  echo 'Traceback-free noise {not json'
  echo '{"engine": "torch eager", "layers": 2, "tokens": 4096, "vocab": 32000, "step_ms": 4096.0, "tokens_per_second": 1000.0, "mfu": 0.2, "loss": 10.6}'
  echo '{"engine": "torch.compile", "error": "RuntimeError: no | compiler"}'
  echo '{"engine": "torch.compile", "layers": 2, "tokens": 4096, "vocab": 32000, "step_ms": 1024.0, "tokens_per_second": 4000.0, "mfu": 0.8, "loss"'
  echo '{"engine": "torch.compile", "step_ms": 1024.0, "tokens_per_second": 4000.0}'
} > "$work/full/torch_layer.log"
summary "$work/full"
expect "$work/full/gpu_check.md" "| minitron | 2048.0 | 2000.0 | 43.2% | 10.5 | 1.00x |"
expect "$work/full/gpu_check.md" "| torch eager | 4096.0 | 1000.0 | 20.0% | 10.6 | 2.00x |"
expect "$work/full/gpu_check.md" "| torch.compile | failed: RuntimeError: no / compiler |"
expect "$work/full/gpu_check.md" "| torch.compile | 1024.0 | 4000.0 | - | - | 0.50x |"

# 4. No minitron row (layer_step failed): the PyTorch rows without ratios.
mkdir "$work/no_minitron"
echo 'layer_step: error: cuda: no CUDA device found' > "$work/no_minitron/layer_step.log"
cp "$work/torch.out" "$work/no_minitron/torch_layer.log"
summary "$work/no_minitron"
grep -F "| torch eager |" "$work/no_minitron/gpu_check.md" | grep -qF "| - |" \
  || fail "no_minitron: the eager row should have no ratio"

# 5. layer_step's row with a non-finite loss (printed as null): timings and ratio still shown.
mkdir "$work/null_loss"
echo '{"engine": "minitron", "layers": 2, "tokens": 4096, "vocab": 32000, "step_ms": 2048.0, "tokens_per_second": 2000.0, "mfu": 0.4321, "loss": null}' > "$work/null_loss/layer_step.log"
summary "$work/null_loss"
expect "$work/null_loss/gpu_check.md" "| minitron | 2048.0 | 2000.0 | 43.2% | - | 1.00x |"

# 6. A budget already spent: every stage is skipped (nothing runs), the summary is still
#    written, and the exit status says something was skipped.
rc=0
OUT="$work/spent" MINITRON_GPU_CHECK_SECONDS=0 PYTHON="$python" bash "$root/bench/gpu_check.sh" \
  > "$work/spent.out" 2>&1 || rc=$?
[[ $rc -eq 1 ]] || { cat "$work/spent.out" >&2; fail "a spent budget should exit 1, not $rc"; }
expect "$work/spent/stages.txt" "configure: skipped, out of time (budget 0 s)"
expect "$work/spent/stages.txt" "torch_layer: skipped, out of time (budget 0 s)"
expect "$work/spent/gpu_check.md" "| (no results: see layer_step.log and torch_layer.log) |"
# Every log in the tarball, and the summary table printed last.
tar -tzf "$work/spent/gpu_check_logs.tar.gz" > "$work/spent_tarball.txt" || fail "no tarball of the logs"
expect "$work/spent_tarball.txt" "./stages.txt"
expect "$work/spent_tarball.txt" "./gpu_check.md"
[[ "$(tail -n 1 "$work/spent.out")" == "$(tail -n 1 "$work/spent/gpu_check.md")" ]] \
  || fail "the summary table is not printed last: $(tail -n 1 "$work/spent.out")"

# 7. A whole run with a fake cmake whose build fails (so the relaxed rebuild runs) and prints
#    ptxas -v counts, and a fake torch_layer.py: the strict configure empties the compiler
#    launchers (a relaxed run's stay in the CMake cache of a reused build folder otherwise), the
#    relaxed one sets them, and the summary names the kernel that spilled and only that one.
mkdir -p "$work/fake_bin"
cat > "$work/fake_bin/cmake" << 'SH'
#!/usr/bin/env bash
printf '%s ' "$@" >> "$FAKE_CMAKE_LOG"; echo >> "$FAKE_CMAKE_LOG"
[[ "$1" == --build ]] || exit 0
cat << 'LOG'
ptxas info    : Compiling entry function '_ZN8minitron4cuda5spillEv' for 'sm_90'
ptxas info    : Function properties for _ZN8minitron4cuda5spillEv
    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Function properties for _ZN8minitron4cuda5cleanEv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
error: a fake build failure
LOG
exit 1
SH
cat > "$work/fake_bin/python_fake" << SH
#!/usr/bin/env bash
if [[ "\$1" == */torch_layer.py ]]; then
  echo '{"engine": "torch eager", "layers": 2, "tokens": 4096, "vocab": 32000, "step_ms": 4096.0, "tokens_per_second": 1000.0, "mfu": 0.2, "loss": 10.6}'
  exit 0
fi
exec "$python" "\$@"
SH
chmod +x "$work/fake_bin/cmake" "$work/fake_bin/python_fake"
rc=0
FAKE_CMAKE_LOG="$work/cmake_calls.txt" PATH="$work/fake_bin:$PATH" OUT="$work/fake_run" \
  MINITRON_GPU_BUILD_DIR="$work/fake_build" MINITRON_GPU_CHECK_SECONDS=120 \
  PYTHON="$work/fake_bin/python_fake" bash "$root/bench/gpu_check.sh" > "$work/fake_run.out" 2>&1 || rc=$?
[[ $rc -eq 1 ]] || { cat "$work/fake_run.out" >&2; fail "a failed build should exit 1, not $rc"; }
strict="$(grep -F -- "-DCMAKE_BUILD_TYPE=Release" "$work/cmake_calls.txt")" || fail "no strict configure call"
grep -qF -- "-DCMAKE_CXX_COMPILER_LAUNCHER= -DCMAKE_CUDA_COMPILER_LAUNCHER= " <<< "$strict" \
  || fail "the strict configure does not empty the launchers: $strict"
expect "$work/cmake_calls.txt" "-DCMAKE_CXX_COMPILER_LAUNCHER=$root/bench/gpu/without_werror.sh"
expect "$work/fake_run/stages.txt" "build: failed; building again without -Werror"
expect "$work/fake_run/gpu_check.md" "## Register spills and stack frames (ptxas, build logs)"
expect "$work/fake_run/gpu_check.md" "16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads"
! grep -qF "clean" "$work/fake_run/gpu_check.md" || fail "a kernel without spills is listed"
expect "$work/fake_run/gpu_check.md" "| torch eager | 4096.0 | 1000.0 | 20.0% | 10.6 | - |"
tar -tzf "$work/fake_run/gpu_check_logs.tar.gz" > "$work/fake_run_tarball.txt" || fail "no tarball of the logs"
for log in stages.txt build.log build_relaxed.log torch_layer.log gpu_check.md; do
  expect "$work/fake_run_tarball.txt" "./$log"
done
[[ "$(tail -n 1 "$work/fake_run.out")" == "$(tail -n 1 "$work/fake_run/gpu_check.md")" ]] \
  || fail "the summary table is not printed last: $(tail -n 1 "$work/fake_run.out")"

# 8. A build log without spills says so.
mkdir "$work/no_spills"
printf '%s\n' "ptxas info    : Function properties for _Z5cleanv" \
  "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" > "$work/no_spills/build.log"
summary "$work/no_spills"
expect "$work/no_spills/gpu_check.md" "none (every kernel: 0 bytes spill stores/loads, 0 bytes stack frame)"
echo "gpu_check CPU checks passed"
