#!/usr/bin/env bash
# Compiler launcher for bench/gpu_check.sh's second build attempt: runs the compiler command
# given with every warnings-as-errors flag taken out (g++ -Werror and -Werror=..., nvcc
# "-Werror all-warnings", -Xcompiler=...,-Werror), so that a compiler newer than the one here
# that warns where ours does not still leaves the lent GPU machine something to measure. The
# strict build runs first; gpu_check.sh says in its summary when this one was needed.
# Usage: CMAKE_<LANG>_COMPILER_LAUNCHER=bench/gpu/without_werror.sh
args=()
while (($#)); do
  case "$1" in
    -Werror) [[ "${2:-}" == all-warnings ]] && shift ;;  # nvcc's form takes a value; g++'s not
    -Werror=*) ;;
    -Xcompiler=*)
      kept="$(sed -E 's/,-Werror(=[^,]*)?//g; s/=-Werror(=[^,]*)?,?/=/' <<< "$1")"
      [[ "$kept" == -Xcompiler= ]] || args+=("$kept") ;;
    *) args+=("$1") ;;
  esac
  shift
done
exec "${args[@]}"
