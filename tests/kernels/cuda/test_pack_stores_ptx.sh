#!/usr/bin/env bash
# The 16-byte pack stores stay 16-byte stores: compiles the CUDA engine to sm_90 PTX with the
# build's nvcc and fails (bench/gpu/pack_stores.py) when a kernel that stores packs (tensor-core
# attention, embedding, RMSNorm) has no st.global.v4 or fills a 16-byte window with narrower
# stores, as nvcc did for a plain struct store of a load128'd pack.
# Usage: test_pack_stores_ptx.sh NVCC WORK_DIR
set -euo pipefail
nvcc=$1 work=$2
root="$(cd "$(dirname "$0")/../../.." && pwd)"
mkdir -p "$work"
"$nvcc" -std=c++20 -O3 -I"$root" -gencode arch=compute_90,code=compute_90 -ptx \
  "$root/kernels/cuda/cuda_backend.cu" -o "$work/cuda_backend.ptx"
"${PYTHON:-python3}" "$root/bench/gpu/pack_stores.py" "$work/cuda_backend.ptx"
