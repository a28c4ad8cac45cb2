// RMSNorm forward and backward (transformers' LlamaRMSNorm), bf16 storage, fp32 arithmetic.
//
//   rstd = 1 / sqrt(mean(x^2) + eps),  out = weight * round(x * rstd)
//
// The rounding of x * rstd to the storage type before the weight multiplies it is what
// transformers does (and kernels/rmsnorm.h), so both engines see the same numbers.
// Forward and the input gradient use one warp per row: rows are a few thousand elements, a warp
// covers one with coalesced loads and reduces with shuffles, no shared memory or block barrier.
// When every row starts on a 16-byte boundary (aligned base pointers, D * sizeof(T) a multiple
// of 16) each lane moves 16-byte packs (kernels/packed.cuh); otherwise it goes element by
// element. The pack path sums each lane's elements in a different order: same fp32 accuracy.
// The weight gradient sums over rows; to stay deterministic without float atomics it is done
// in two fixed-order passes: column-parallel partial sums over fixed 64-row chunks (a thread
// reads a pack of columns per row when rows are aligned), then one thread per column adds the
// chunk partials in chunk order (a small pass: N / 64 rows of floats, left element-wise).
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// ---- kernels ----

// The end of a warp's forward row, shared with residual_rmsnorm.cuh: `sum` is the lane's part
// of sum(x^2); writes the row's rstd and y = weight * round(x * rstd) (packs when kVector).
template <typename T, bool kVector>
__device__ void rmsnorm_finish_row(T* y, float* rstd, const T* x, const T* weight, std::int64_t D,
                                   float sum, float eps) {
  constexpr int K = kVector ? pack_elements<T>() : 1;
  const int lane = threadIdx.x % kWarpSize;
  sum = warp_sum(sum);
  const float r = rsqrtf(sum / static_cast<float>(D) + eps);
  if (lane == 0) *rstd = r;
  if constexpr (kVector) {
    for (std::int64_t j = lane * K; j < D; j += kWarpSize * K) {
      float v[K], w[K];
      load_floats(v, x + j);
      load_floats(w, weight + j);
#pragma unroll
      for (int e = 0; e < K; ++e) v[e] = w[e] * round_to<T>(v[e] * r);
      store_floats(y + j, v);
    }
  } else {
    for (std::int64_t j = lane; j < D; j += kWarpSize)
      y[j] = from_float<T>(to_float(weight[j]) * round_to<T>(to_float(x[j]) * r));
  }
}

template <typename T, bool kVector>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* in, const T* weight,
                                       std::int64_t N, std::int64_t D, float eps) {
  constexpr int K = kVector ? pack_elements<T>() : 1;
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) +
                           threadIdx.x / kWarpSize;
  if (row >= N) return;  // whole warps leave together: the shuffles below stay full-warp
  const T* x = in + row * D;
  T* y = out + row * D;
  float sum = 0;
  if constexpr (kVector) {  // D is a multiple of K here
    for (std::int64_t j = lane * K; j < D; j += kWarpSize * K) {
      float v[K];
      load_floats(v, x + j);
#pragma unroll
      for (int e = 0; e < K; ++e) sum += v[e] * v[e];
    }
  } else {
    for (std::int64_t j = lane; j < D; j += kWarpSize) {
      const float v = to_float(x[j]);
      sum += v * v;
    }
  }
  rmsnorm_finish_row<T, kVector>(y, rstd + row, x, weight, D, sum, eps);
}

// din += r * g - r^3 / D * x * sum(g * x), g = dout * weight; one warp per row.
template <typename T, bool kVector>
__global__ void rmsnorm_backward_input_kernel(T* din, const T* dout, const T* in, const T* weight,
                                              const float* rstd, std::int64_t N, std::int64_t D) {
  constexpr int K = kVector ? pack_elements<T>() : 1;
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t row = blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) +
                           threadIdx.x / kWarpSize;
  if (row >= N) return;
  const T* x = in + row * D;
  const T* dy = dout + row * D;
  T* dx = din + row * D;
  float dot = 0;
  if constexpr (kVector) {
    for (std::int64_t j = lane * K; j < D; j += kWarpSize * K) {
      float a[K], w[K], b[K];
      load_floats(a, dy + j);
      load_floats(w, weight + j);
      load_floats(b, x + j);
#pragma unroll
      for (int e = 0; e < K; ++e) dot += a[e] * w[e] * b[e];
    }
  } else {
    for (std::int64_t j = lane; j < D; j += kWarpSize)
      dot += to_float(dy[j]) * to_float(weight[j]) * to_float(x[j]);
  }
  dot = warp_sum(dot);
  const float r = rstd[row];
  const float c = r * r * r * dot / static_cast<float>(D);
  if constexpr (kVector) {
    for (std::int64_t j = lane * K; j < D; j += kWarpSize * K) {
      float a[K], w[K], b[K], d[K];
      load_floats(a, dy + j);
      load_floats(w, weight + j);
      load_floats(b, x + j);
      load_floats(d, dx + j);
#pragma unroll
      for (int e = 0; e < K; ++e) d[e] += r * a[e] * w[e] - c * b[e];
      store_floats(dx + j, d);
    }
  } else {
    for (std::int64_t j = lane; j < D; j += kWarpSize) {
      const float delta = r * to_float(dy[j]) * to_float(weight[j]) - c * to_float(x[j]);
      dx[j] = from_float<T>(to_float(dx[j]) + delta);
    }
  }
}

constexpr int kRmsnormRowsPerChunk = 64;

// partial[chunk, j] = sum over the chunk's rows of dout[n, j] * round(x[n, j] * r[n]). With
// kVector each thread owns K adjacent columns and reads them as 16-byte packs (every row
// aligned: checked by the launcher); each column's sum keeps its row order either way.
template <typename T, bool kVector>
__global__ void rmsnorm_weight_partial_kernel(float* partial, const T* dout, const T* in,
                                              const float* rstd, std::int64_t N, std::int64_t D) {
  constexpr int K = kVector ? pack_elements<T>() : 1;
  const std::int64_t j = (blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x) * K;
  if (j >= D) return;
  const std::int64_t chunk = blockIdx.y;
  const std::int64_t begin = chunk * kRmsnormRowsPerChunk;
  const std::int64_t end = begin + kRmsnormRowsPerChunk < N ? begin + kRmsnormRowsPerChunk : N;
  if constexpr (kVector) {  // D is a multiple of K here
    float acc[K] = {};
    for (std::int64_t n = begin; n < end; ++n) {
      float g[K], x[K];
      load_floats(g, dout + n * D + j);
      load_floats(x, in + n * D + j);
      const float r = rstd[n];
#pragma unroll
      for (int e = 0; e < K; ++e) acc[e] += g[e] * round_to<T>(x[e] * r);
    }
    store_floats(partial + chunk * D + j, acc);
  } else {
    float acc = 0;
    for (std::int64_t n = begin; n < end; ++n)
      acc += to_float(dout[n * D + j]) * round_to<T>(to_float(in[n * D + j]) * rstd[n]);
    partial[chunk * D + j] = acc;
  }
}

// dweight[j] += sum over chunks of partial[chunk, j], chunks in order.
template <typename G>
__global__ void rmsnorm_weight_reduce_kernel(G* dweight, const float* partial, std::int64_t chunks,
                                             std::int64_t D) {
  const std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (j >= D) return;
  float acc = 0;
  for (std::int64_t c = 0; c < chunks; ++c) acc += partial[c * D + j];
  dweight[j] = from_float<G>(to_float(dweight[j]) + acc);
}

// ---- launchers ----

constexpr int kRmsnormThreads = 256;  // 8 rows (warps) per block
constexpr int kRmsnormColumnThreads = 128;

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* in, const T* weight, std::int64_t N,
                     std::int64_t D, float eps, cudaStream_t stream) {
  if (N <= 0) return;
  const std::int64_t rows_per_block = kRmsnormThreads / kWarpSize;
  const dim3 grid(static_cast<unsigned>(ceil_div(N, rows_per_block)));
  if (rows_aligned16<T>(D, {out, in, weight}))
    launch(rmsnorm_forward_kernel<T, true>, grid, dim3(kRmsnormThreads), 0, stream, out, rstd, in,
           weight, N, D, eps);
  else
    launch(rmsnorm_forward_kernel<T, false>, grid, dim3(kRmsnormThreads), 0, stream, out, rstd,
           in, weight, N, D, eps);
}

// Float scratch the backward needs for its weight-gradient partial sums.
inline std::int64_t rmsnorm_backward_workspace_floats(std::int64_t N, std::int64_t D) {
  return ceil_div(N, kRmsnormRowsPerChunk) * D;
}

template <typename G, typename T>
void rmsnorm_backward(T* din, G* dweight, const T* dout, const T* in, const T* weight,
                      const float* rstd, std::int64_t N, std::int64_t D, float* workspace,
                      cudaStream_t stream) {
  if (N <= 0) return;
  const std::int64_t rows_per_block = kRmsnormThreads / kWarpSize;
  const dim3 row_grid(static_cast<unsigned>(ceil_div(N, rows_per_block)));
  if (rows_aligned16<T>(D, {din, dout, in, weight}))
    launch(rmsnorm_backward_input_kernel<T, true>, row_grid, dim3(kRmsnormThreads), 0, stream,
           din, dout, in, weight, rstd, N, D);
  else
    launch(rmsnorm_backward_input_kernel<T, false>, row_grid, dim3(kRmsnormThreads), 0, stream,
           din, dout, in, weight, rstd, N, D);
  const std::int64_t chunks = ceil_div(N, kRmsnormRowsPerChunk);
  const unsigned column_blocks = static_cast<unsigned>(ceil_div(D, kRmsnormColumnThreads));
  // chunks <= 65535 (gridDim.y) holds for N up to 4M rows.
  MINITRON_ASSERT(chunks <= 65535, "rmsnorm backward: ", N, " rows");
  // The partials are floats: rows of D floats stay aligned whenever rows of D T's do.
  if (rows_aligned16<T>(D, {dout, in, workspace})) {
    const unsigned pack_blocks =
        static_cast<unsigned>(ceil_div(D / pack_elements<T>(), kRmsnormColumnThreads));
    launch(rmsnorm_weight_partial_kernel<T, true>, dim3(pack_blocks, static_cast<unsigned>(chunks)),
           dim3(kRmsnormColumnThreads), 0, stream, workspace, dout, in, rstd, N, D);
  } else {
    launch(rmsnorm_weight_partial_kernel<T, false>,
           dim3(column_blocks, static_cast<unsigned>(chunks)), dim3(kRmsnormColumnThreads), 0,
           stream, workspace, dout, in, rstd, N, D);
  }
  launch(rmsnorm_weight_reduce_kernel<G>, dim3(column_blocks), dim3(kRmsnormColumnThreads), 0,
         stream, dweight, static_cast<const float*>(workspace), chunks, D);
}

}  // namespace minitron::cuda
