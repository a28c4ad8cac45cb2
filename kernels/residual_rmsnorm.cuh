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
// Rows move as 16-byte packs (kernels/packed.cuh) when every row of every pointer is 16-byte
// aligned, element by element otherwise; a lane's pass-2 packs are the ones it wrote in pass 1.
// The backward is rmsnorm_backward into the stream's gradient (see the reference header).
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"
#include "kernels/rmsnorm.cuh"

namespace minitron::cuda {

template <typename T, bool kVector>
__global__ void residual_rmsnorm_forward_kernel(T* residual_out, T* out, float* rstd,
                                                const T* residual, const T* branch,
                                                const T* weight, std::int64_t N, std::int64_t D,
                                                float eps) {
  constexpr int K = kVector ? pack_elements<T>() : 1;
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) +
                           threadIdx.x / kWarpSize;
  if (row >= N) return;  // whole warps leave together: the shuffles below stay full-warp
  const T* x = residual + row * D;
  const T* b = branch + row * D;
  T* h = residual_out + row * D;
  T* y = out + row * D;
  float sum = 0;
  if constexpr (kVector) {  // D is a multiple of K here
    for (std::int64_t j = lane * K; j < D; j += kWarpSize * K) {
      float u[K], v[K];
      load_floats(u, x + j);
      load_floats(v, b + j);
#pragma unroll
      for (int e = 0; e < K; ++e) {
        u[e] = round_to<T>(u[e] + v[e]);  // the stored stream value, exactly representable
        sum += u[e] * u[e];
      }
      store_floats(h + j, u);
    }
  } else {
    for (std::int64_t j = lane; j < D; j += kWarpSize) {
      const T v = from_float<T>(to_float(x[j]) + to_float(b[j]));
      h[j] = v;
      const float f = to_float(v);
      sum += f * f;
    }
  }
  rmsnorm_finish_row<T, kVector>(y, rstd + row, h, weight, D, sum, eps);
}

constexpr int kResidualRmsnormThreads = 256;  // 8 rows (warps) per block

template <typename T>
void residual_rmsnorm_forward(T* residual_out, T* out, float* rstd, const T* residual,
                              const T* branch, const T* weight, std::int64_t N, std::int64_t D,
                              float eps, cudaStream_t stream) {
  if (N <= 0) return;
  const std::int64_t rows_per_block = kResidualRmsnormThreads / kWarpSize;
  const dim3 grid(static_cast<unsigned>(ceil_div(N, rows_per_block)));
  if (rows_aligned16<T>(D, {residual_out, out, residual, branch, weight}))
    launch(residual_rmsnorm_forward_kernel<T, true>, grid, dim3(kResidualRmsnormThreads), 0,
           stream, residual_out, out, rstd, residual, branch, weight, N, D, eps);
  else
    launch(residual_rmsnorm_forward_kernel<T, false>, grid, dim3(kResidualRmsnormThreads), 0,
           stream, residual_out, out, rstd, residual, branch, weight, N, D, eps);
}

}  // namespace minitron::cuda
