// RMSNorm forward and backward (transformers' LlamaRMSNorm), bf16 storage, fp32 arithmetic.
//
//   rstd = 1 / sqrt(mean(x^2) + eps),  out = weight * round(x * rstd)
//
// The rounding of x * rstd to the storage type before the weight multiplies it is what
// transformers does (and kernels/rmsnorm.h), so both engines see the same numbers.
// Forward and the input gradient use one warp per row: rows are a few thousand elements, a warp
// covers one with coalesced loads and reduces with shuffles, no shared memory or block barrier.
// Rows move as 16-byte packs (kernels/packed.cuh) whatever their width or offset: each warp
// splits its row into a scalar head, whole packs and a scalar tail (see rmsnorm_row); which
// lane sums which element follows the split: same fp32 accuracy, last bits may differ.
// The weight gradient sums over rows; to stay deterministic without float atomics it is done
// in two fixed-order passes: column-parallel partial sums over fixed 64-row chunks (a thread
// reads a pack of columns per row when all rows share one split), then one thread per column
// adds the chunk partials in chunk order (a small pass: N / 64 rows of floats, element-wise).
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/device_memory.h"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// ---- kernels ----

// How a warp walks one row: the row's streams (x, y, ... of that row) are split for 16-byte
// packs together (split_rows16: a scalar head up to the first column where all of them are
// aligned, whole packs, a scalar tail), so any width and any offset moves the bulk as packs.
// Streams at incompatible phases give an all-scalar split for that row. The weight is read at
// the same columns as packs only when it shares the phase (`weight_packed`); otherwise element
// by element within each step (one vector every row re-reads: it is served from cache).
// Which lane sums which element follows the split, so fp32 sums may differ in the last bits
// between placements of a row; each is as accurate.
struct RmsnormRow {
  RowSplit split;
  bool weight_packed;
};

template <typename T, typename... Rows>
__device__ __forceinline__ RmsnormRow rmsnorm_row(std::int64_t D, const T* weight,
                                                  const Rows*... rows) {
  const RowSplit split = split_rows16<pack_elements<T>()>(D, rows...);
  return {split, aligned16(weight + split.head)};
}

// The end of a warp's forward row, shared with residual_rmsnorm.cuh: `sum` is the lane's part
// of sum(x^2); writes the row's rstd and y = weight * round(x * rstd), walking the row as the
// first pass did (`row`: same lanes, same elements).
template <typename T>
__device__ void rmsnorm_finish_row(T* y, float* rstd, const T* x, const T* weight, std::int64_t D,
                                   const RmsnormRow& row, float sum, float eps) {
  const int lane = threadIdx.x % kWarpSize;
  sum = warp_sum(sum);
  const float r = rsqrtf(sum / static_cast<float>(D) + eps);
  if (lane == 0) *rstd = r;
  for_each_span<pack_elements<T>()>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float v[W], w[W];
    load_span(v, x + j);
    load_span(w, weight + j, row.weight_packed);
#pragma unroll
    for (int e = 0; e < W; ++e) v[e] = w[e] * round_to<T>(v[e] * r);
    store_span(y + j, v);
  });
}

template <typename T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* in, const T* weight,
                                       std::int64_t N, std::int64_t D, float eps) {
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t n =
      blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (n >= N) return;  // whole warps leave together: the shuffles below stay full-warp
  const T* x = in + n * D;
  T* y = out + n * D;
  const RmsnormRow row = rmsnorm_row(D, weight, x, static_cast<const T*>(y));
  float sum = 0;
  for_each_span<pack_elements<T>()>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float v[W];
    load_span(v, x + j);
#pragma unroll
    for (int e = 0; e < W; ++e) sum += v[e] * v[e];
  });
  rmsnorm_finish_row(y, rstd + n, x, weight, D, row, sum, eps);
}

// din += r * g - r^3 / D * x * sum(g * x), g = dout * weight; one warp per row.
template <typename T>
__global__ void rmsnorm_backward_input_kernel(T* din, const T* dout, const T* in, const T* weight,
                                              const float* rstd, std::int64_t N, std::int64_t D) {
  constexpr int K = pack_elements<T>();
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t n =
      blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (n >= N) return;
  const T* x = in + n * D;
  const T* dy = dout + n * D;
  T* dx = din + n * D;
  const RmsnormRow row = rmsnorm_row(D, weight, x, dy, static_cast<const T*>(dx));
  float dot = 0;
  for_each_span<K>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float a[W], w[W], b[W];
    load_span(a, dy + j);
    load_span(w, weight + j, row.weight_packed);
    load_span(b, x + j);
#pragma unroll
    for (int e = 0; e < W; ++e) dot += a[e] * w[e] * b[e];
  });
  dot = warp_sum(dot);
  const float r = rstd[n];
  const float c = r * r * r * dot / static_cast<float>(D);
  for_each_span<K>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float a[W], w[W], b[W], d[W];
    load_span(a, dy + j);
    load_span(w, weight + j, row.weight_packed);
    load_span(b, x + j);
    load_span(d, dx + j);
#pragma unroll
    for (int e = 0; e < W; ++e) d[e] += r * a[e] * w[e] - c * b[e];
    store_span(dx + j, d);
  });
}

// partial[chunk, j] = sum over the chunk's rows of dout[n, j] * round(x[n, j] * r[n]). Each
// thread owns a column slot (column_slot): K adjacent columns read as 16-byte packs in every
// row, or one head/tail column. That needs one split for all rows of dout and in (the
// launcher's rows_split); an odd width gives each row its own phase, so then every slot is
// one column. The partials (N / 64 rows) are stored as packs only when they share the split
// (`partial_packed`). Each column's sum keeps its row order either way.
template <typename T>
__global__ void rmsnorm_weight_partial_kernel(float* partial, const T* dout, const T* in,
                                              const float* rstd, std::int64_t N, std::int64_t D,
                                              RowSplit split, bool partial_packed) {
  const std::int64_t chunk = blockIdx.y;
  const std::int64_t begin = chunk * kRmsnormRowsPerChunk;
  const std::int64_t end = begin + kRmsnormRowsPerChunk < N ? begin + kRmsnormRowsPerChunk : N;
  column_slot<pack_elements<T>()>(split, D, grid_start(), [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float acc[W] = {};
    for (std::int64_t n = begin; n < end; ++n) {
      float g[W], x[W];
      load_span(g, dout + n * D + j);
      load_span(x, in + n * D + j);
      const float r = rstd[n];
#pragma unroll
      for (int e = 0; e < W; ++e) acc[e] += g[e] * round_to<T>(x[e] * r);
    }
    store_span(partial + chunk * D + j, acc, partial_packed);
  });
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
  launch(rmsnorm_forward_kernel<T>, grid, dim3(kRmsnormThreads), 0, stream, out, rstd, in, weight,
         N, D, eps);
}

template <typename G, typename T>
void rmsnorm_backward(T* din, G* dweight, const T* dout, const T* in, const T* weight,
                      const float* rstd, std::int64_t N, std::int64_t D, float* workspace,
                      cudaStream_t stream) {
  if (N <= 0) return;
  const std::int64_t rows_per_block = kRmsnormThreads / kWarpSize;
  const dim3 row_grid(static_cast<unsigned>(ceil_div(N, rows_per_block)));
  launch(rmsnorm_backward_input_kernel<T>, row_grid, dim3(kRmsnormThreads), 0, stream, din, dout,
         in, weight, rstd, N, D);
  const std::int64_t chunks = ceil_div(N, kRmsnormRowsPerChunk);
  // chunks <= 65535 (gridDim.y) holds for N up to 4M rows.
  MINITRON_ASSERT(chunks <= 65535, "rmsnorm backward: ", N, " rows");
  constexpr int K = pack_elements<T>();
  const RowSplit split = rows_split<K>(D, dout, in);
  // Rows of D floats keep one phase whenever rows of D T's do (sizeof(T) <= 4).
  const bool partial_packed = aligned16(workspace + split.head);
  const unsigned slot_blocks =
      static_cast<unsigned>(ceil_div(column_slots(split, D, K), kRmsnormColumnThreads));
  launch(rmsnorm_weight_partial_kernel<T>, dim3(slot_blocks, static_cast<unsigned>(chunks)),
         dim3(kRmsnormColumnThreads), 0, stream, workspace, dout, in, rstd, N, D, split,
         partial_packed);
  const unsigned column_blocks = static_cast<unsigned>(ceil_div(D, kRmsnormColumnThreads));
  launch(rmsnorm_weight_reduce_kernel<G>, dim3(column_blocks), dim3(kRmsnormColumnThreads), 0,
         stream, dweight, static_cast<const float*>(workspace), chunks, D);
}

}  // namespace minitron::cuda
