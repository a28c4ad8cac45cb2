// RMSNorm forward and backward (transformers' LlamaRMSNorm), bf16 storage, fp32 arithmetic.
//
//   rstd = 1 / sqrt(mean(x^2) + eps),  out = weight * round(x * rstd)
//
// The rounding of x * rstd to the storage type before the weight multiplies it is what
// transformers does (and kernels/rmsnorm.h), so both engines see the same numbers.
// Forward and the input gradient use one warp per row: rows are a few thousand elements, a warp
// covers one with coalesced loads and reduces with shuffles. Each row is read from global memory
// once: the block stages the weight in shared memory for its warps, and each warp keeps the row
// streams its second pass needs (x; dy and x) in shared memory, as far as they fit
// (rmsnorm_shared_plan): at D = 4096 in bf16 a forward moves 1.06x its distinct bytes, against
// 2x when x was read in both passes and the weight by every row; up to D = 16384 too, where
// fewer warps' rows fit and each forward warp takes several rows of its block.
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
// by element within each step.
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

// Shared memory of the row kernels (rmsnorm forward and input gradient, residual_rmsnorm): the
// weight, staged once per block so that its warps (one row each) do not each read it from
// global memory, then per warp the row streams that the second pass reads again (x; dy and x),
// so that a row is read from global memory once. Each part starts on a 16-byte boundary. The
// launcher sizes it (rmsnorm_shared_plan); what does not fit is read from global memory.
template <typename T>
__host__ __device__ __forceinline__ std::int64_t rmsnorm_shared_row(std::int64_t D) {
  return (D * static_cast<std::int64_t>(sizeof(T)) + 15) / 16 * 16 /
         static_cast<std::int64_t>(sizeof(T));
}

// The whole block copies weight[0, D) into dst (16-byte aligned, shared): packs when the weight
// is 16-byte aligned, else element by element. Ends with a barrier.
template <typename T>
__device__ void stage_weight(T* dst, const T* weight, std::int64_t D) {
  constexpr int K = Packed128<T>::kSize;
  const std::int64_t packs = aligned16(weight) ? D / K : 0;
  for (std::int64_t p = threadIdx.x; p < packs; p += blockDim.x)
    store128_shared(dst + p * K, load128(weight + p * K));
  for (std::int64_t j = packs * K + threadIdx.x; j < D; j += blockDim.x) dst[j] = weight[j];
  __syncthreads();
}

// The end of a warp's forward row, shared with residual_rmsnorm.cuh: `sum` is the lane's part
// of sum(x^2); writes the row's rstd and y = weight * round(x * rstd), walking the row as the
// first pass did (`row`: same lanes, same elements), x read back through `copy`.
template <typename T>
__device__ void rmsnorm_finish_row(T* y, float* rstd, const T* x, const RowCopy<T>& copy,
                                   const T* weight, std::int64_t D, const RmsnormRow& row,
                                   float sum, float eps) {
  const int lane = threadIdx.x % kWarpSize;
  sum = warp_sum(sum);
  const float r = rsqrtf(sum / static_cast<float>(D) + eps);
  if (lane == 0) *rstd = r;
  for_each_span<pack_elements<T>()>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float v[W], w[W];
    load_span(v, copy.at(x, j));
    load_span(w, weight + j, row.weight_packed);
#pragma unroll
    for (int e = 0; e < W; ++e) v[e] = w[e] * round_to<T>(v[e] * r);
    store_span(y + j, v);
  });
}

// The block's weight (staged in shared memory, or the global one) and this warp's cache of
// `streams` rows (nullptr when not cached), from the launcher's plan.
template <typename T>
struct RmsnormBlockShared {
  const T* weight;
  T* rows;
};

template <typename T>
__device__ RmsnormBlockShared<T> rmsnorm_block_shared(const T* weight, std::int64_t D,
                                                      bool weight_shared, bool cache_rows,
                                                      int streams) {
  MINITRON_DYNAMIC_SHARED(T, shared);
  const std::int64_t stride = rmsnorm_shared_row<T>(D);
  T* next = shared;
  const T* w = weight;
  if (weight_shared) {
    stage_weight(next, weight, D);
    w = next;
    next += stride;
  }
  T* rows = cache_rows ? next + (threadIdx.x / kWarpSize) * streams * stride : nullptr;
  return {w, rows};
}

// One warp's forward row: y = weight * round(x * rstd), x kept in `cache` (the warp's, or
// nullptr) between the sum of squares and the scaling.
template <typename T>
__device__ void rmsnorm_forward_row(T* y, float* rstd, const T* x, T* cache, const T* weight,
                                    std::int64_t D, float eps) {
  const int lane = threadIdx.x % kWarpSize;
  const RmsnormRow row = rmsnorm_row(D, weight, x, static_cast<const T*>(y));
  const RowCopy<T> copy{cache, row.split.head, D, D};
  float sum = 0;
  for_each_span<pack_elements<T>()>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float v[W];
    load_span(v, x + j);
    copy.keep(j, v);
#pragma unroll
    for (int e = 0; e < W; ++e) sum += v[e] * v[e];
  });
  rmsnorm_finish_row(y, rstd, x, copy, weight, D, row, sum, eps);
}

// Each warp takes `rows_per_warp` rows (warp w of a block of `warps`: rows first + w, first + w
// + warps, ...), so that a block covers kRmsnormBlockRows rows whatever its warps and the staged
// weight is read once per that many rows: above D = 8192 (bf16) only 2 warps' rows fit beside
// the weight, and one row a warp read the weight once every 2 rows (1.24x the ideal bytes).
template <typename T>
__global__ void rmsnorm_forward_kernel(T* out, float* rstd, const T* in, const T* weight,
                                       std::int64_t N, std::int64_t D, float eps,
                                       bool weight_shared, bool cache_rows, int rows_per_warp) {
  const RmsnormBlockShared<T> shared =
      rmsnorm_block_shared(weight, D, weight_shared, cache_rows, 1);
  const std::int64_t warps = blockDim.x / kWarpSize;
  const std::int64_t first = blockIdx.x * warps * rows_per_warp + threadIdx.x / kWarpSize;
  for (int k = 0; k < rows_per_warp; ++k) {
    const std::int64_t n = first + k * warps;
    if (n >= N) return;  // after the staging barrier; whole warps leave: shuffles stay full-warp
    // The warp's cache serves row after row, and a row at another phase gives a lane other
    // slots: every lane must be done reading the last row's before any lane writes this one's.
    __syncwarp();
    rmsnorm_forward_row(out + n * D, rstd + n, in + n * D, shared.rows, shared.weight, D, eps);
  }
}

// din += r * g - r^3 / D * x * sum(g * x), g = dout * weight; one warp per row, dout and x
// kept for the second pass (two cached streams per warp: dy, then x).
template <typename T>
__global__ void rmsnorm_backward_input_kernel(T* din, const T* dout, const T* in, const T* weight,
                                              const float* rstd, std::int64_t N, std::int64_t D,
                                              bool weight_shared, bool cache_rows) {
  constexpr int K = pack_elements<T>();
  const int lane = threadIdx.x % kWarpSize;
  const RmsnormBlockShared<T> shared =
      rmsnorm_block_shared(weight, D, weight_shared, cache_rows, 2);
  const std::int64_t n =
      blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (n >= N) return;
  const T* x = in + n * D;
  const T* dy = dout + n * D;
  T* dx = din + n * D;
  const T* w = shared.weight;
  const RmsnormRow row = rmsnorm_row(D, w, x, dy, static_cast<const T*>(dx));
  T* second = shared.rows ? shared.rows + rmsnorm_shared_row<T>(D) : nullptr;
  const RowCopy<T> dy_copy{shared.rows, row.split.head, D, D};
  const RowCopy<T> x_copy{second, row.split.head, D, D};
  float dot = 0;
  for_each_span<K>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float a[W], wv[W], b[W];
    load_span(a, dy + j);
    load_span(wv, w + j, row.weight_packed);
    load_span(b, x + j);
    dy_copy.keep(j, a);
    x_copy.keep(j, b);
#pragma unroll
    for (int e = 0; e < W; ++e) dot += a[e] * wv[e] * b[e];
  });
  dot = warp_sum(dot);
  const float r = rstd[n];
  const float c = r * r * r * dot / static_cast<float>(D);
  for_each_span<K>(row.split, D, lane, kWarpSize, [&](auto width, std::int64_t j) {
    constexpr int W = decltype(width)::value;
    float a[W], wv[W], b[W], d[W];
    load_span(a, dy_copy.at(dy, j));
    load_span(wv, w + j, row.weight_packed);
    load_span(b, x_copy.at(x, j));
    load_span(d, dx + j);
#pragma unroll
    for (int e = 0; e < W; ++e) d[e] += r * a[e] * wv[e] - c * b[e];
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

constexpr int kRmsnormThreads = 256;  // at most 8 rows (warps) per block
// Rows a forward block covers whatever its warps (rmsnorm_forward_kernel).
constexpr int kRmsnormBlockRows = kRmsnormThreads / kWarpSize;
constexpr int kRmsnormColumnThreads = 128;
// Shared memory a row kernel may take per block: under the 99 KiB that sm_86/89/120 allow a
// block after opting in (sm_80 163 KiB, sm_90/100 227 KiB), so every target runs one plan.
constexpr std::int64_t kRmsnormSharedBudget = 96 * 1024;

// How a row kernel uses shared memory for rows of D elements of T with `streams` row streams
// read twice: the weight and every warp's streams when at least 2 warps' fit (as many warps as
// fit, up to 8; fewer rows per block stage the weight more often, but each row is read once),
// else the weight alone, else nothing (every re-read from global memory, as with D in the tens
// of thousands).
struct RmsnormSharedPlan {
  int threads;
  bool weight_shared, cache_rows;
  std::size_t bytes;
};

template <typename T>
RmsnormSharedPlan rmsnorm_shared_plan(std::int64_t D, int streams) {
  const std::int64_t row = rmsnorm_shared_row<T>(D) * static_cast<std::int64_t>(sizeof(T));
  for (int warps = kRmsnormThreads / kWarpSize; warps >= 2; warps /= 2) {
    const std::int64_t bytes = (1 + static_cast<std::int64_t>(streams) * warps) * row;
    if (bytes <= kRmsnormSharedBudget)
      return {warps * kWarpSize, true, true, static_cast<std::size_t>(bytes)};
  }
  if (row <= kRmsnormSharedBudget)
    return {kRmsnormThreads, true, false, static_cast<std::size_t>(row)};
  return {kRmsnormThreads, false, false, 0};
}

// Above the default 48 KiB a kernel's dynamic shared memory needs an opt-in (the emulator
// enforces the same rule).
template <typename Kernel>
void allow_row_kernel_shared(Kernel kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    MINITRON_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
}

template <typename T>
void rmsnorm_forward(T* out, float* rstd, const T* in, const T* weight, std::int64_t N,
                     std::int64_t D, float eps, cudaStream_t stream) {
  if (N <= 0) return;
  const RmsnormSharedPlan plan = rmsnorm_shared_plan<T>(D, 1);
  const int rows_per_warp = kRmsnormBlockRows / (plan.threads / kWarpSize);
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kRmsnormBlockRows)));
  allow_row_kernel_shared(rmsnorm_forward_kernel<T>, plan.bytes);
  launch(rmsnorm_forward_kernel<T>, grid, dim3(plan.threads), plan.bytes, stream, out, rstd, in,
         weight, N, D, eps, plan.weight_shared, plan.cache_rows, rows_per_warp);
}

template <typename G, typename T>
void rmsnorm_backward(T* din, G* dweight, const T* dout, const T* in, const T* weight,
                      const float* rstd, std::int64_t N, std::int64_t D, float* workspace,
                      cudaStream_t stream) {
  if (N <= 0) return;
  const RmsnormSharedPlan plan = rmsnorm_shared_plan<T>(D, 2);
  const dim3 row_grid(static_cast<unsigned>(ceil_div(N, plan.threads / kWarpSize)));
  allow_row_kernel_shared(rmsnorm_backward_input_kernel<T>, plan.bytes);
  launch(rmsnorm_backward_input_kernel<T>, row_grid, dim3(plan.threads), plan.bytes, stream, din,
         dout, in, weight, rstd, N, D, plan.weight_shared, plan.cache_rows);
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
