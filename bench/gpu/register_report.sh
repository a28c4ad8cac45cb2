#!/usr/bin/env bash
# Writes bench/results/registers.md: registers, stack, spills and static shared memory per kernel
# for sm_80 and sm_90, as ptxas reports them. Needs nvcc only (no GPU): runs here or on a lent GPU.
# Usage: bench/gpu/register_report.sh [output.md]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$root/bench/results/registers.md}"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
python="${PYTHON:-$(command -v python3)}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
for arch in 80 90; do
  "$nvcc" -std=c++20 -O3 -I"$root" -gencode "arch=compute_$arch,code=sm_$arch" \
    -Xptxas -v -Xptxas -warn-spills,-warn-lmem-usage -c "$root/kernels/cuda/cuda_backend.cu" \
    -o "$tmp/backend_$arch.o" 2> "$tmp/ptxas_$arch.log"
done
mkdir -p "$(dirname "$out")"
"$python" "$root/bench/gpu/register_report.py" "$tmp/ptxas_80.log" "$tmp/ptxas_90.log" > "$out"
echo "wrote $out ($(grep -c '^| `' "$out") kernel rows)"
