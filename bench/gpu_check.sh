#!/usr/bin/env bash
# One command for a lent GPU machine (H200: nvcc 13, cmake, ninja, Python + PyTorch, no Debian
# -dev packages, no network): builds the CUDA engine there, runs the kernel tests on the device
# (and under compute-sanitizer memcheck/racecheck when present), benchmarks every kernel, times a
# training step of 8B-shaped layers next to PyTorch eager and torch.compile, and writes a summary
# table to $OUT/gpu_check.md and bench/results/gpu_check.md. Budget: about 8 minutes.
#
#   here, once:        bench/gpu_check.sh --prepare-deps   # copies GoogleTest sources and the
#                                                           # nlohmann headers into .deps/
#   on the GPU:        bench/gpu_check.sh                  # with .deps carried along (git
#                                                           # ignores it: pass it explicitly)
#
# The build is bench/gpu/CMakeLists.txt, a CUDA-only project: it compiles kernels/cuda/*.cu
# with the main build's flags (kernels/cuda/cuda_flags.cmake), the shared model/loss/optimizer
# code and the tests in tests/cuda/, needing nothing beyond the CUDA toolkit and .deps/.
# Each stage has its own time limit and a failed stage does not stop the later ones; the exit
# status is non-zero when any stage failed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
deps="$root/.deps"

if [[ "${1:-}" == "--prepare-deps" ]]; then
  mkdir -p "$deps/include"
  cp -r /usr/include/nlohmann "$deps/include/"
  if [[ -d /usr/src/googletest ]]; then
    rm -rf "$deps/googletest"
    cp -r /usr/src/googletest "$deps/googletest"
  else
    echo "no /usr/src/googletest here: the GPU run will skip the kernel tests" >&2
  fi
  du -sh "$deps"
  exit 0
fi

out="${OUT:-$root/bench/results/gpu_check_out}"
mkdir -p "$out" "$root/bench/results"
build="$root/build-gpu"
log() { echo "== $*" | tee -a "$out/stages.txt"; }
failed=0
stage() {  # stage NAME SECONDS COMMAND...: runs with a limit, logs to $out/NAME.log
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  log "$name: exit $rc after $((SECONDS - start)) s (limit $limit s)"
  if [[ $rc -ne 0 ]]; then failed=1; tail -20 "$out/$name.log"; fi
  return $rc
}

export PATH="/usr/local/cuda/bin:$PATH"
: > "$out/stages.txt"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
[[ -d "$deps/include/nlohmann" ]] || log "warning: $deps/include/nlohmann missing (run --prepare-deps where it exists)"

# 1. Build: only the device's architecture (sm_90 on an H200) to save time; the main build
#    checks sm_80 and sm_90 with the same flags.
gencode="${MINITRON_CUDA_GENCODE:-arch=compute_90,code=sm_90}"
generator=(); command -v ninja > /dev/null && generator=(-G Ninja)
stage configure 60 cmake -S "$root/bench/gpu" -B "$build" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release -DMINITRON_DEPS_DIR="$deps" -DMINITRON_CUDA_GENCODE="$gencode"
stage build 240 cmake --build "$build" -j "$(nproc)"

# 2. Kernel tests on the device, then under compute-sanitizer on small cases: memcheck for
#    out-of-bounds and uninitialised accesses, racecheck for shared-memory races (the kernels
#    with shared tiles: attention, scan in the embedding backward, block reductions).
tests="$build/gpu_kernel_tests"
if [[ -x "$tests" ]]; then
  stage kernel_tests 60 "$tests" --gtest_output="xml:$out/kernel_tests.xml"
  if command -v compute-sanitizer > /dev/null; then
    small='*CopyAddScale*:*SwiGlu*:*RmsNorm*:*Embedding*:*SumOfSquares*:*CrossEntropy*:*Gemm*:*Tq20*:*Tq1_*'
    stage memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 1 "$tests" --gtest_filter="$small"
    stage racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 1 "$tests" \
      --gtest_filter='*Tq20*:*Tq1_*:*Embedding*:*SumOfSquares*:*RowCosine*:*CrossEntropy*'
  else
    log "compute-sanitizer not found: memcheck/racecheck skipped"
  fi
else
  log "gpu_kernel_tests not built (no .deps/googletest): tests skipped"
  failed=1
fi

# 3. Kernel benchmarks at 8B shapes, beside copy bandwidth and the cuBLASLt GEMM rate.
[[ -x "$build/kernel_bench" ]] && stage kernel_bench 90 "$build/kernel_bench" "$out/kernels.md"

# 4. A training step of 8B-shaped layers: ours, then PyTorch eager and torch.compile.
layers=2 seq=4096 vocab=32000
[[ -x "$build/layer_step" ]] && stage layer_step 90 "$build/layer_step" $layers $seq $vocab
python="$(command -v python3 || command -v python)"
stage torch_layer 180 "$python" "$root/bench/gpu/torch_layer.py" $layers $seq $vocab

# 5. Summary: the kernel table and the step comparison with ratios.
{
  echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
  echo
  grep -m1 -o "NVIDIA [A-Z0-9]*[^|]*" "$out/nvidia-smi.txt" 2>/dev/null | head -1 | sed 's/^/Device: /'
  echo
  echo '## Stages'
  echo
  sed 's/^== /- /' "$out/stages.txt"
  echo
  if [[ -f "$out/kernel_tests.log" ]]; then
    echo '## Kernel tests on the device'
    echo
    grep -E '^\[  (PASSED|FAILED) ' "$out/kernel_tests.log" | sed 's/^/    /'
    echo
  fi
  [[ -f "$out/kernels.md" ]] && sed 's/^# /## /' "$out/kernels.md" && echo
  echo "## Training step, $layers Llama-3.1-8B layers, 1 x $seq tokens, vocab $vocab"
  echo
  "$python" - "$out/layer_step.log" "$out/torch_layer.log" <<'PY'
import json, sys
rows = []
for path in sys.argv[1:]:
    try:
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    except OSError:
        pass
ours = next((r for r in rows if r["engine"] == "minitron"), None)
print("| engine | step ms | tokens/s | MFU | loss | minitron / this |")
print("|---|---|---|---|---|---|")
for r in rows:
    ratio = f"{ours['tokens_per_second'] / r['tokens_per_second']:.2f}x" if ours else "-"
    print(f"| {r['engine']} | {r['step_ms']} | {r['tokens_per_second']} | {100 * r['mfu']:.1f}% | {r['loss']} | {ratio} |")
if not rows:
    print("| (no results: see layer_step.log and torch_layer.log) | | | | | |")
PY
} > "$out/gpu_check.md"
cp "$out/gpu_check.md" "$root/bench/results/gpu_check.md" 2>/dev/null || true
cat "$out/gpu_check.md"
exit $failed
