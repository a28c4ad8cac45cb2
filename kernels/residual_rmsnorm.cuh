// Residual add fused with RMSNorm forward (CPU reference: kernels/residual_rmsnorm.h).
//
//   residual_out = round(residual + branch),  rstd = 1 / sqrt(mean(residual_out^2) + eps),
//   out = weight * round(residual_out * rstd)
//
// Why fused: unfused, the stream update is a copy of the residual plus a GEMM that reads and
// writes it again (beta = 1), and then the norm reads it once more: 6 row-sized transfers and
// three launches. Here the GEMM writes the branch once and this kernel reads residual and branch
// and writes the stream and the norm's output: 5 transfers, two launches.
// One warp per row as in rmsnorm.cuh, whose rmsnorm_finish_row is the second pass. It re-reads
// residual_out, which the same lane wrote in the first (so `branch` may alias `residual_out`:
// every element is read before the same thread overwrites it); the norm thereby sees exactly the
// rounded stream the reference sees.
// Rows move as 16-byte packs (kernels/packed.cuh) at any width or offset, split as in
// rmsnorm.cuh (all four row streams share the split, else the row goes element by element);
// pass 2 walks the row with the same split, so a lane's pass-2 elements are the ones it wrote.
// The backward is rmsnorm_backward into the stream's gradient (see the reference header).
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"
#include "kernels/rmsnorm.cuh"

namespace minitron::cuda {

template <typename T>
__global__ void residual_rmsnorm_forward_kernel(T* residual_out, T* out, float* rstd,
                                                const T* residual, const T* branch, const T* weight,
                                                std::int64_t N, std::int64_t D, float eps) {
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t n =
      blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (n >= N) return;  // whole warps leave together: the shuffles below stay full-warp
  const T* x = residual + n * D;
  const T* b = branch + n * D;
  T* h = residual_out + n * D;
  T* y = out + n * D;
  const RmsnormRow row =
      rmsnorm_row(D, weight, x, b, static_cast<const T*>(h), static_cast<const T*>(y));
  float sum = 0;
  for_each_span<pack_elements<T>()>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float u[W], v[W];
    load_span(u, x + j);
    load_span(v, b + j);
#pragma unroll
    for (int e = 0; e < W; ++e) {
      u[e] = round_to<T>(u[e] + v[e]);  // the stored stream value, exactly representable
      sum += u[e] * u[e];
    }
    store_span(h + j, u);
  });
  rmsnorm_finish_row(y, rstd + n, h, weight, D, row, sum, eps);
}

constexpr int kResidualRmsnormThreads = 256;  // 8 rows (warps) per block

template <typename T>
void residual_rmsnorm_forward(T* residual_out, T* out, float* rstd, const T* residual,
                              const T* branch, const T* weight, std::int64_t N, std::int64_t D,
                              float eps, cudaStream_t stream) {
  if (N <= 0) return;
  const std::int64_t rows_per_block = kResidualRmsnormThreads / kWarpSize;
  const dim3 grid(static_cast<unsigned>(ceil_div(N, rows_per_block)));
  launch(residual_rmsnorm_forward_kernel<T>, grid, dim3(kResidualRmsnormThreads), 0, stream,
         residual_out, out, rstd, residual, branch, weight, N, D, eps);
}

}  // namespace minitron::cuda
