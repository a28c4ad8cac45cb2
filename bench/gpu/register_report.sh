#!/usr/bin/env bash
# Writes bench/results/registers.md: registers, stack, spills and static shared memory per kernel
# for every SASS target of the build (sm_80, sm_90, sm_100, sm_120; kernels/cuda/cuda_flags.cmake),
# as ptxas reports them. Needs nvcc only (no GPU): runs here or on a lent GPU.
# Then checks the sm_90 PTX (kept from the same compile) with pack_stores.py: it fails when a
# kernel that stores 16-byte packs (tensor-core attention, embedding, RMSNorm) lost its
# st.global.v4 stores to narrower ones.
# Usage: bench/gpu/register_report.sh [output.md]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/bench/results/registers.md}"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
python="${PYTHON:-$(command -v python3)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
archs=(80 90 100 120)
for arch in "${archs[@]}"; do
  mkdir -p "$tmp/keep_$arch"
  "$nvcc" -std=c++20 -O3 -I"$root" -gencode "arch=compute_$arch,code=sm_$arch" \
    -Xptxas -v -Xptxas -warn-spills,-warn-lmem-usage -keep -keep-dir "$tmp/keep_$arch" \
    -c "$root/kernels/cuda/cuda_backend.cu" -o "$tmp/backend_$arch.o" 2> "$tmp/ptxas_$arch.log"
done
mkdir -p "$(dirname "$out")"
logs=(); for arch in "${archs[@]}"; do logs+=("$tmp/ptxas_$arch.log"); done
"$python" "$root/bench/gpu/register_report.py" "${logs[@]}" > "$out"
echo "wrote $out ($(grep -c '^| `' "$out") kernel rows)"
"$python" "$root/bench/gpu/pack_stores.py" "$tmp/keep_90/cuda_backend.ptx"
