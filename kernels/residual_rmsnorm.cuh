// Residual add fused with RMSNorm forward (CPU reference: kernels/residual_rmsnorm.h).
//
//   residual_out = round(residual + branch),  rstd = 1 / sqrt(mean(residual_out^2) + eps),
//   out = weight * round(residual_out * rstd)
//
// Why fused: unfused, the stream update is a copy of the residual plus a GEMM that reads and
// writes it again (beta = 1), and then the norm reads it once more: 6 row-sized transfers and
// three launches. Here the GEMM writes the branch once and this kernel reads residual and branch
// and writes the stream and the norm's output: 5 transfers, two launches.
// One warp per row as in rmsnorm.cuh, whose rmsnorm_finish_row is the second pass and whose
// shared-memory plan it shares (the weight staged per block, one cached stream per warp). The
// second pass reads residual_out back from the warp's copy in shared memory (from global memory
// when it does not fit), written by the same lane in the first (so `branch` may alias
// `residual_out`: every element is read before the same thread overwrites it); the norm thereby
// sees exactly the rounded stream the reference sees.
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
                                                std::int64_t N, std::int64_t D, float eps,
                                                bool weight_shared, bool cache_rows) {
  const int lane = threadIdx.x % kWarpSize;
  const RmsnormBlockShared<T> shared =
      rmsnorm_block_shared(weight, D, weight_shared, cache_rows, 1);
  const std::int64_t n =
      blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (n >= N) return;  // after the staging barrier; whole warps leave: shuffles stay full-warp
  const T* x = residual + n * D;
  const T* b = branch + n * D;
  T* h = residual_out + n * D;
  T* y = out + n * D;
  const RmsnormRow row =
      rmsnorm_row(D, shared.weight, x, b, static_cast<const T*>(h), static_cast<const T*>(y));
  const RowCopy<T> copy{shared.rows, row.split.head, D, D};
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
    copy.keep(j, u);
  });
  rmsnorm_finish_row(y, rstd + n, static_cast<const T*>(h), copy, shared.weight, D, row, sum, eps);
}

template <typename T>
void residual_rmsnorm_forward(T* residual_out, T* out, float* rstd, const T* residual,
                              const T* branch, const T* weight, std::int64_t N, std::int64_t D,
                              float eps, cudaStream_t stream) {
  if (N <= 0) return;
  const RmsnormSharedPlan plan = rmsnorm_shared_plan<T>(D, 1);
  const dim3 grid(static_cast<unsigned>(ceil_div(N, plan.threads / kWarpSize)));
  allow_row_kernel_shared(residual_rmsnorm_forward_kernel<T>, plan.bytes);
  launch(residual_rmsnorm_forward_kernel<T>, grid, dim3(plan.threads), plan.bytes, stream,
         residual_out, out, rstd, residual, branch, weight, N, D, eps, plan.weight_shared,
         plan.cache_rows);
}

}  // namespace minitron::cuda
