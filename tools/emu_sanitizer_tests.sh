#!/usr/bin/env bash
# Builds the emulated tests (kernels run on the CUDA emulator) with ThreadSanitizer and with
# AddressSanitizer + UndefinedBehaviorSanitizer, each in its own build folder, and runs them.
#   tools/emu_sanitizer_tests.sh [thread] [address,undefined]     (default: both)
# Environment: BUILD_ROOT (folder for the build folders, default: the repository), JOBS (default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${JOBS:-2}
build_root=${BUILD_ROOT:-$root}
sanitizers=("$@")
if [ ${#sanitizers[@]} -eq 0 ]; then sanitizers=(thread address,undefined); fi
for sanitizer in "${sanitizers[@]}"; do
  dir="$build_root/build-emu-${sanitizer//,/-}"
  echo "== emulated tests with -fsanitize=$sanitizer in $dir"
  # No nvcc needed: emulated tests compile kernels as host C++. RelWithDebInfo keeps it fast
  # while giving sanitizer reports source lines.
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMINITRON_CUDA=OFF \
        -DMINITRON_EMU_SANITIZER="$sanitizer" > "$dir.configure.log" 2>&1 ||
    { cat "$dir.configure.log"; exit 1; }
  cmake --build "$dir" --target minitron_emulated_tests -j "$jobs"
  # Known false positive under TSan: a __shared__ array of a type with a non-trivial default
  # constructor (__nv_bfloat16) becomes a `static thread_local` whose initialisation guard is
  # shared by the fibers of one OS thread without a happens-before edge TSan can see. The
  # scheduler should give each fiber an acquire at start; until then that test is left out.
  exclude=()
  if [ "$sanitizer" = thread ]; then exclude=(-E 'MmaGemmMatchesCpuGemm'); fi
  # TSan: fail on the first report; ASan: detect leaks too; UBSan: print stacks.
  (cd "$dir" && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
               ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1" \
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
               ctest -L emulated --output-on-failure -j "$jobs" "${exclude[@]}")
done
echo "== emulated tests passed under: ${sanitizers[*]}"
