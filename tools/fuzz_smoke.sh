#!/usr/bin/env bash
# Builds the fuzz targets of the file parsers (tests/fuzz: libFuzzer with ASan + UBSan, clang 14,
# -DMINITRON_FUZZ=ON, in their own build folder) and runs each for FUZZ_SECONDS seconds, starting
# from its seed corpus (tests/fuzz/corpus/<target>). `make test` runs it for 10 s a target after the
# sanitizer tests, so a target that no longer builds or crashes at once fails the suite; `make fuzz
# FUZZ_SECONDS=N` runs the same for longer. Any crash, sanitizer report, exception other than
# minitron::Error, leak, timeout (one input over 10 s) or out-of-memory fails it (non-zero exit).
#   tools/fuzz_smoke.sh [TARGET...]     (default: every tests/fuzz/fuzz_*.cpp)
# Environment: BUILD_ROOT (folder for build-fuzz, default: the repository's build/), JOBS (default
# 2), FUZZ_SECONDS (default 10), FUZZ_PARALLEL (targets run at once, default 1), FUZZ_CXX (default
# clang++-14).
# Inputs the fuzzer finds go to build-fuzz/corpus/<target> (the repository's seeds stay as they
# are); a failing input is saved as build-fuzz/findings/<target>/crash-* (or timeout-*, oom-*):
# rerun it with build-fuzz/tests/fuzz/<target> FILE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=${JOBS:-2}
seconds=${FUZZ_SECONDS:-10}
parallel=${FUZZ_PARALLEL:-1}
[[ "$parallel" =~ ^[1-9][0-9]*$ ]] || { echo "fuzz: FUZZ_PARALLEL must be a positive integer, got '$parallel'" >&2; exit 1; }
build_root=${BUILD_ROOT:-$root/build}
compiler=${FUZZ_CXX:-clang++-14}
dir="$build_root/build-fuzz"
if ! command -v "$compiler" > /dev/null; then
  echo "fuzz: $compiler not found (Debian packages clang-14 and libclang-rt-14-dev: libFuzzer and the sanitizers)" >&2
  exit 1
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for source in "$root"/tests/fuzz/fuzz_*.cpp; do targets+=("$(basename "$source" .cpp)"); done
fi

echo "== fuzz targets (libFuzzer, ASan + UBSan) in $dir"
start=$SECONDS
mkdir -p "$dir"
cmake -S "$root" -B "$dir" -DMINITRON_FUZZ=ON -DCMAKE_CXX_COMPILER="$compiler" -DCMAKE_BUILD_TYPE= \
      > "$dir/configure.log" 2>&1 || { cat "$dir/configure.log"; exit 1; }
cmake --build "$dir" --target "${targets[@]}" -j "$jobs"
built=$SECONDS

# Runs one target; its result line goes to $dir/<target>.result, its status is the exit status.
run_target() {
  local target=$1
  local corpus="$dir/corpus/$target"
  local findings="$dir/findings/$target"
  mkdir -p "$corpus" "$findings"
  local log="$dir/$target.log"
  # A target's dictionary (tests/fuzz/<target>.dict: its grammar's tokens), when it has one.
  local dictionary=()
  [ -f "$root/tests/fuzz/$target.dict" ] && dictionary=(-dict="$root/tests/fuzz/$target.dict")
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a parser must not allocate
  # gigabytes because a file says so. detect_leaks: every refusal must free what it built.
  if ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0" \
     UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
     "$dir/tests/fuzz/$target" "$corpus" "$root/tests/fuzz/corpus/$target" -max_total_time="$seconds" \
       -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$findings/" -print_final_stats=1 "${dictionary[@]}" > "$log" 2>&1; then
    echo "== $target: $(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') runs in ${seconds} s, no finding"
  else
    echo "== $target: FAILED (log: $log; inputs: $findings)"
    grep -E -m 20 "ERROR|runtime error|SUMMARY|uncaught|Test unit written" "$log" || tail -n 20 "$log"
    return 1
  fi
}

# FUZZ_PARALLEL targets run at once (a long campaign on a many-core machine); each prints its
# lines when it ends, so lines of different targets never interleave.
failed=()
pids=()
names=()
collect_one() {
  local i
  wait -n -p finished_pid "${pids[@]}" && status=0 || status=$?
  for i in "${!pids[@]}"; do
    if [ "${pids[$i]}" = "$finished_pid" ]; then
      cat "$dir/${names[$i]}.result"
      [ "$status" -eq 0 ] || failed+=("${names[$i]}")
      unset 'pids[i]' 'names[i]'
      pids=("${pids[@]}")
      names=("${names[@]}")
      return
    fi
  done
}
for target in "${targets[@]}"; do
  while [ ${#pids[@]} -ge "$parallel" ]; do collect_one; done
  run_target "$target" > "$dir/$target.result" 2>&1 &
  pids+=($!)
  names+=("$target")
done
while [ ${#pids[@]} -gt 0 ]; do collect_one; done
echo "== fuzz: build $((built - start)) s, ${#targets[@]} targets x ${seconds} s, ${parallel} at a time"
if [ ${#failed[@]} -ne 0 ]; then
  echo "== fuzz: findings in ${failed[*]}" >&2
  exit 1
fi
echo "== fuzz: no findings"
