#!/usr/bin/env bash
# Builds the emulated tests (kernels run on the CUDA emulator) with ThreadSanitizer and with
# AddressSanitizer + UndefinedBehaviorSanitizer, each in its own build folder, and runs them.
# `make test` runs it after the plain test suite; any sanitizer report fails it (non-zero exit).
#   tools/emu_sanitizer_tests.sh [thread] [address,undefined]     (default: both)
# Environment: BUILD_ROOT (folder for the build folders, default: the repository), JOBS (default 2).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${JOBS:-2}
build_root=${BUILD_ROOT:-$root}
sanitizers=("$@")
if [ ${#sanitizers[@]} -eq 0 ]; then sanitizers=(thread address,undefined); fi
mkdir -p "$build_root"
for sanitizer in "${sanitizers[@]}"; do
  dir="$build_root/build-emu-${sanitizer//,/-}"
  echo "== emulated tests with -fsanitize=$sanitizer in $dir"
  start=$SECONDS
  # No nvcc needed: emulated tests compile kernels as host C++. RelWithDebInfo keeps it fast
  # while giving sanitizer reports source lines.
  mkdir -p "$dir"
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMINITRON_CUDA=OFF \
        -DMINITRON_EMU_SANITIZER="$sanitizer" > "$dir/configure.log" 2>&1 ||
    { cat "$dir/configure.log"; exit 1; }
  # Under TSan the CMake files leave out the emulated training step (minutes when instrumented;
  # its kernels are covered one by one) and run the CPU references single-threaded (libgomp and
  # OpenBLAS are not instrumented, so their threads' synchronisation would read as races).
  cmake --build "$dir" --target minitron_emulated_tests -j "$jobs"
  built=$SECONDS
  # TSan: fail on the first report; ASan: detect leaks too; UBSan: stop on the first report.
  # A report makes its test process exit non-zero, so ctest (and this script) fails.
  (cd "$dir" && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
               ASAN_OPTIONS="detect_leaks=1:strict_string_checks=1" \
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
               OPENBLAS_NUM_THREADS=1 \
               ctest -L emulated --no-tests=error --output-on-failure -j "$jobs" --timeout 600)
  echo "== -fsanitize=$sanitizer: build $((built - start)) s, tests $((SECONDS - built)) s"
done
echo "== emulated tests passed under: ${sanitizers[*]}"
