// Reductions: the sum of squares behind the global gradient norm, per-channel statistics over a
// sequence (importance scoring) and per-row cosine similarity (Block Importance).
//
// Deterministic without float atomics: every sum has a fixed shape. The sum of squares runs in
// two passes: fixed 16384-element chunks, each reduced by one block in double, then one block
// adds the chunk partials in a fixed order. The chunk size does not depend on the GPU, so the
// result is the same on any device. A chunk is read as 16-byte packs (kernels/packed.cuh)
// between a scalar head (up to its first 16-byte boundary) and tail, whatever its start; chunks
// are whole packs long, so all share the buffer's split. The per-channel statistics read K
// adjacent channels per thread as packs when every row of the activations shares one split
// (the launcher's rows_split; element by element otherwise), and the cosine splits each row of
// its two inputs for packs as the losses do; neither changes a per-channel sum's order.
#pragma once

#include <cstdint>

#include "core/backend.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/device_memory.h"
#include "kernels/packed.cuh"

namespace minitron::cuda {

constexpr int kSquaresThreads = 256;
constexpr int kSquaresFinalThreads = 1024;

// ---- kernels ----

template <typename T>
__global__ void sum_of_squares_partial_kernel(double* partial, const T* x, std::int64_t n) {
  __shared__ double scratch[kWarpSize];
  const std::int64_t begin = blockIdx.x * kSquaresChunk;
  const std::int64_t end = begin + kSquaresChunk < n ? begin + kSquaresChunk : n;
  constexpr int K = Packed128<T>::kSize;
  const T* chunk = x + begin;
  const RowSplit split = split_row16(chunk, end - begin);
  double sum = 0;
  for (std::int64_t i = split.head + threadIdx.x * static_cast<std::int64_t>(K); i < split.body_end;
       i += static_cast<std::int64_t>(blockDim.x) * K) {
    float v[K];
    load_floats(v, chunk + i);
#pragma unroll
    for (int e = 0; e < K; ++e) sum += static_cast<double>(v[e]) * v[e];
  }
  const std::int64_t scalars = split_scalars(split, end - begin);
  for (std::int64_t j = threadIdx.x; j < scalars; j += blockDim.x) {
    const double v = to_float(chunk[split_scalar_index(split, j)]);
    sum += v * v;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = sum;
}

// static: bench/gpu/kernel_bench.cu includes this header too, to time the launcher on its own.
static __global__ void sum_of_squares_final_kernel(double* result, const double* partial,
                                                   std::int64_t chunks) {
  __shared__ double scratch[kWarpSize];
  double sum = 0;
  for (std::int64_t i = threadIdx.x; i < chunks; i += blockDim.x) sum += partial[i];
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) *result = sum;
}

// One column slot (column_slot: K adjacent channels read as packs, or one head/tail channel)
// per thread and sample: a warp reads consecutive channels of one row (coalesced) and walks the
// sequence. Mean: mean |x|; L2: sqrt(sum x^2); Variance: two passes. The [B, C] output is small
// and written element by element.
template <typename T>
__global__ void reduce_over_sequence_kernel(float* out, const T* act, std::int64_t T_,
                                            std::int64_t C, SequenceReduction reduction,
                                            RowSplit split) {
  const std::int64_t b = blockIdx.y;
  column_slot<pack_elements<T>()>(split, C, grid_start(), [&](auto width, std::int64_t c) {
    constexpr int W = decltype(width)::value;
    const T* base = act + b * T_ * C + c;
    // Calls step(v) with this slot's W values at each position, in sequence order.
    auto over_sequence = [&](auto&& step) {
      float v[W];
      for (std::int64_t t = 0; t < T_; ++t) {
        load_span(v, base + t * C);
        step(v);
      }
    };
    float acc[W] = {};
    if (reduction == SequenceReduction::Variance) {
      float mean[W] = {};
      over_sequence([&](const float(&v)[W]) {
#pragma unroll
        for (int e = 0; e < W; ++e) mean[e] += v[e];
      });
#pragma unroll
      for (int e = 0; e < W; ++e) mean[e] /= static_cast<float>(T_);
      over_sequence([&](const float(&v)[W]) {
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const float d = v[e] - mean[e];
          acc[e] += d * d;
        }
      });
#pragma unroll
      for (int e = 0; e < W; ++e) acc[e] /= static_cast<float>(T_);
    } else if (reduction == SequenceReduction::Mean) {
      over_sequence([&](const float(&v)[W]) {
#pragma unroll
        for (int e = 0; e < W; ++e) acc[e] += fabsf(v[e]);
      });
#pragma unroll
      for (int e = 0; e < W; ++e) acc[e] /= static_cast<float>(T_);
    } else {
      over_sequence([&](const float(&v)[W]) {
#pragma unroll
        for (int e = 0; e < W; ++e) acc[e] += v[e] * v[e];
      });
#pragma unroll
      for (int e = 0; e < W; ++e) acc[e] = sqrtf(acc[e]);
    }
#pragma unroll
    for (int e = 0; e < W; ++e) out[b * C + c + e] = acc[e];
  });
}

// out[r] = a[r].b[r] / (|a[r]| |b[r]|), 0 when either row is all zeros; one block per row, the
// two rows split together (packs between a scalar head and tail; all scalar when a[r] and b[r]
// start at different phases). Where a row starts decides which thread sums which element: the
// last bits may differ between placements, each as accurate.
template <typename T>
__global__ void row_cosine_kernel(float* out, const T* a, const T* b, std::int64_t C) {
  __shared__ float scratch[kWarpSize];
  const std::int64_t r = blockIdx.x;
  const T* x = a + r * C;
  const T* y = b + r * C;
  float xy = 0, xx = 0, yy = 0;
  const RowSplit split = split_rows16<pack_elements<T>()>(C, x, y);
  for_each_span<pack_elements<T>()>(split, C, threadIdx.x, blockDim.x,
                                    [&](auto width, std::int64_t c) {
                                      constexpr int W = decltype(width)::value;
                                      float u[W], w[W];
                                      load_span(u, x + c);
                                      load_span(w, y + c);
#pragma unroll
                                      for (int e = 0; e < W; ++e) {
                                        xy += u[e] * w[e];
                                        xx += u[e] * u[e];
                                        yy += w[e] * w[e];
                                      }
                                    });
  xy = block_sum(xy, scratch);
  xx = block_sum(xx, scratch);
  yy = block_sum(yy, scratch);
  if (threadIdx.x == 0) out[r] = (xx == 0 || yy == 0) ? 0.0f : xy / (sqrtf(xx) * sqrtf(yy));
}

// ---- launchers ----

// Writes the sum into result[0] on the device (workspace: sum_of_squares_workspace_doubles(n)
// doubles, result may be its last element).
template <typename T>
void sum_of_squares(double* result, const T* x, std::int64_t n, double* workspace,
                    cudaStream_t stream) {
  const std::int64_t chunks = ceil_div(n, kSquaresChunk);
  if (chunks == 0) {
    MINITRON_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));
    return;
  }
  launch(sum_of_squares_partial_kernel<T>, dim3(static_cast<unsigned>(chunks)),
         dim3(kSquaresThreads), 0, stream, workspace, x, n);
  launch(sum_of_squares_final_kernel, dim3(1), dim3(kSquaresFinalThreads), 0, stream, result,
         static_cast<const double*>(workspace), chunks);
}

constexpr int kReduceThreads = 128;

template <typename T>
void reduce_over_sequence(float* out, const T* act, std::int64_t B, std::int64_t T_, std::int64_t C,
                          SequenceReduction reduction, cudaStream_t stream) {
  MINITRON_ASSERT(T_ > 0, "reduce_over_sequence: empty sequence");
  MINITRON_ASSERT(B <= 65535, "reduce_over_sequence: batch ", B, " beyond gridDim.y");
  if (B <= 0 || C <= 0) return;
  constexpr int K = pack_elements<T>();
  const RowSplit split = rows_split<K>(C, act);
  const std::int64_t slots = column_slots(split, C, K);
  launch(reduce_over_sequence_kernel<T>,
         dim3(static_cast<unsigned>(ceil_div(slots, kReduceThreads)), static_cast<unsigned>(B)),
         dim3(kReduceThreads), 0, stream, out, act, T_, C, reduction, split);
}

template <typename T>
void row_cosine(float* out, const T* a, const T* b, std::int64_t rows, std::int64_t C,
                cudaStream_t stream) {
  if (rows <= 0) return;
  launch(row_cosine_kernel<T>, dim3(static_cast<unsigned>(rows)), dim3(256), 0, stream, out, a, b,
         C);
}

}  // namespace minitron::cuda
