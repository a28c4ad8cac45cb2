#!/usr/bin/env bash
# The built CUDA libraries ship SASS for every GPU generation the project supports and PTX that
# a newer one can JIT: every object with device code in each library must list ELF sm_80, sm_90,
# sm_100 and sm_120 and PTX compute_90 (kernels/cuda/cuda_flags.cmake). A missing target would
# only show on that GPU, as "no kernel image is available". First checks that the check itself
# fails on an object built without sm_90 (so it cannot pass by reading nothing).
# Usage: test_fatbin_targets.sh PYTHON NVCC WORK_DIR LIBRARY [LIBRARY ...]
set -euo pipefail
python="$1" nvcc="$2" work="$3"
shift 3
here="$(cd "$(dirname "$0")" && pwd)"
reader="$here/../../../tools/fatbin_targets.py"
required_elf=(sm_80 sm_90 sm_100 sm_120)
required_ptx=(compute_90)

# check FILE: 0 when every object with device code in FILE has every required target.
check() {
  local listing missing=0 line objects=0
  listing="$("$python" "$reader" "$1")" || return 1
  while read -r line; do
    [[ -z "$line" ]] && continue
    objects=$((objects + 1))
    local elf="${line#* elf=}" ptx="${line##* ptx=}"
    elf=",${elf%% ptx=*}," ptx=",$ptx,"
    for target in "${required_elf[@]}"; do
      [[ "$elf" == *",$target,"* ]] || { echo "missing SASS $target: $line"; missing=1; }
    done
    for target in "${required_ptx[@]}"; do
      [[ "$ptx" == *",$target,"* ]] || { echo "missing PTX $target: $line"; missing=1; }
    done
  done <<< "$listing"
  if ((objects == 0)); then
    echo "no object with device code in $1 (expected the CUDA engine's fatbinaries)"
    return 1
  fi
  ((missing == 0)) && echo "$1: $objects objects, each with SASS ${required_elf[*]} and PTX ${required_ptx[*]}"
  return "$missing"
}

mkdir -p "$work"
printf '__global__ void probe(float* x) { x[threadIdx.x] *= 2.0f; }\n' > "$work/probe.cu"
"$nvcc" -c "$work/probe.cu" -o "$work/probe.o" -gencode arch=compute_80,code=sm_80 \
  -gencode arch=compute_100,code=sm_100 -gencode arch=compute_120,code=sm_120 \
  -gencode arch=compute_90,code=compute_90
if probe_output="$(check "$work/probe.o")"; then
  echo "FAIL: the check passed an object built without sm_90 SASS"
  exit 1
fi
if [[ "$probe_output" != *"missing SASS sm_90"* ]]; then
  echo "FAIL: the check did not name the missing sm_90 on the probe: $probe_output"
  exit 1
fi

status=0
for library in "$@"; do
  [[ -f "$library" ]] || { echo "FAIL: $library not found (expected the built CUDA library)"; exit 1; }
  check "$library" || status=1
done
exit "$status"
