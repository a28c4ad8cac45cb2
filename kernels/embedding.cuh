// Token embedding: forward lookup and a deterministic backward scatter-add.
//
// The backward must not use float atomics (their order, hence the rounding, varies from run to
// run). Instead the positions are grouped by token with a counting sort (integer atomics only,
// whose results do not depend on order), each group is put back into position order, and one
// block owns each table row that received gradient: it adds that row's dout rows in position
// order, exactly the order of the CPU reference (kernels/embedding.h).
// Rows move as 16-byte packs (kernels/packed.cuh) at any width or offset: the forward copies
// any row whose source and destination start at the same address modulo 16 as packs between a
// scalar head and tail (element by element otherwise); the backward does the same for a table
// row whose dout rows all share one split with it (always, when rows are whole 16-byte units
// wide and the tensors' phases agree). Neither changes a result: copies, and sums in the same
// order.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/device_memory.h"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// ---- kernels ----

// One block per position n. A token id outside [0, vocab) cannot throw here; its row becomes
// NaN so that the loss shows it instead of silently reading another row.
template <typename T>
__global__ void embedding_forward_kernel(T* out, const std::int32_t* tokens, const T* table,
                                         std::int64_t D, std::int64_t vocab) {
  constexpr int K = Packed128<T>::kSize;
  const std::int64_t n = blockIdx.x;
  const std::int32_t token = tokens[n];
  T* dst = out + n * D;
  const bool valid = token >= 0 && token < vocab;
  const T* src = table + static_cast<std::int64_t>(valid ? token : 0) * D;
  const RowSplit split = !valid || same_phase16(dst, src) ? split_row16(dst, D) : RowSplit{0, 0};
  const T value = from_float<T>(NAN);
  for (std::int64_t d = split.head + threadIdx.x * static_cast<std::int64_t>(K); d < split.body_end;
       d += static_cast<std::int64_t>(blockDim.x) * K) {
    Packed128<T> v;
    if (valid) {
      v = load128(src + d);
    } else {
#pragma unroll
      for (int e = 0; e < K; ++e) v.payload[e] = value;
    }
    store128(dst + d, v);
  }
  const std::int64_t scalars = split_scalars(split, D);
  for (std::int64_t j = threadIdx.x; j < scalars; j += blockDim.x) {
    const std::int64_t d = split_scalar_index(split, j);
    dst[d] = valid ? src[d] : value;
  }
}

// Step 1: how many positions hold each token (counts zeroed by the launcher).
__global__ void embedding_count_kernel(int* counts, const std::int32_t* tokens, std::int64_t N,
                                       std::int64_t vocab) {
  const std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const std::int32_t token = tokens[n];
  if (token >= 0 && token < vocab) atomicAdd(&counts[token], 1);
}

// Step 2: offsets[v] = sum of counts[0 .. v), offsets[vocab] = total. One block walks the
// counts in tiles of 4096: each thread takes 4 adjacent counts (kept in registers), the 1024
// thread totals are scanned across the block, and the tile's offsets are written with the
// running total of the tiles before: every count is read once and every offset written once.
constexpr int kScanThreads = 1024;
constexpr int kScanPerThread = 4;
__global__ void embedding_scan_kernel(int* offsets, const int* counts, std::int64_t vocab) {
  __shared__ int partial[kScanThreads];
  const int tid = static_cast<int>(threadIdx.x);
  int carry = 0;  // the sum of the counts of the tiles before, the same in every thread
  for (std::int64_t tile = 0; tile < vocab; tile += kScanThreads * kScanPerThread) {
    const std::int64_t first = tile + static_cast<std::int64_t>(tid) * kScanPerThread;
    int c[kScanPerThread];
    int sum = 0;
#pragma unroll
    for (int e = 0; e < kScanPerThread; ++e) {
      c[e] = first + e < vocab ? counts[first + e] : 0;
      sum += c[e];
    }
    partial[tid] = sum;
    __syncthreads();
    // Hillis-Steele inclusive scan over the 1024 thread totals.
    for (int stride = 1; stride < kScanThreads; stride *= 2) {
      const int add = tid >= stride ? partial[tid - stride] : 0;
      __syncthreads();
      partial[tid] += add;
      __syncthreads();
    }
    int running = carry + (tid == 0 ? 0 : partial[tid - 1]);
#pragma unroll
    for (int e = 0; e < kScanPerThread; ++e) {
      if (first + e < vocab) offsets[first + e] = running;
      running += c[e];
    }
    carry += partial[kScanThreads - 1];
    __syncthreads();  // every thread has read partial before the next tile rewrites it
  }
  if (tid == 0) offsets[vocab] = carry;
}

// Step 3: drop each position into its token's bucket (order inside a bucket is arbitrary).
__global__ void embedding_bucket_kernel(int* slots, int* cursor, const int* offsets,
                                        const std::int32_t* tokens, std::int64_t N,
                                        std::int64_t vocab) {
  const std::int64_t n = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  const std::int32_t token = tokens[n];
  if (token < 0 || token >= vocab) return;
  slots[offsets[token] + atomicAdd(&cursor[token], 1)] = static_cast<int>(n);
}

// Step 4: restore position order inside each bucket: a position's rank is the number of
// smaller positions in its bucket (buckets are short except for very frequent tokens; a bucket
// of L slots costs L * (L - 1) reads of slots). The slot count is read once per block.
__global__ void embedding_order_kernel(int* sorted, const int* slots, const int* offsets,
                                       const std::int32_t* tokens, const int* total) {
  __shared__ int total_shared;
  if (threadIdx.x == 0) total_shared = *total;
  __syncthreads();
  const std::int64_t s = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (s >= total_shared) return;
  const int n = slots[s];
  const int token = tokens[n];
  const int begin = offsets[token], end = offsets[token + 1];
  int rank = 0;
  for (int i = begin; i < end; ++i)
    if (i != s) rank += slots[i] < n;  // its own slot holds n, never smaller
  sorted[begin + rank] = n;
}

// Step 5: one block per bucket slot; the block at the first slot of a bucket owns that table
// row and adds its dout rows in position order. The table row and all its dout rows are walked
// with one split (packs of K adjacent columns per thread between a scalar head and tail); when
// a dout row starts at another phase (rows of odd width), the whole row goes element by element.
// The slot's token and bucket bounds are read once per block (thread 0, through shared memory),
// and the bucket's first kEmbeddingBucketShared positions are staged in shared memory for every
// thread's columns; positions past them (only very frequent tokens) are read from global memory.
constexpr int kEmbeddingBucketShared = 1024;
template <typename G, typename T>
__global__ void embedding_accumulate_kernel(G* dtable, const T* dout, const int* sorted,
                                            const int* offsets, const std::int32_t* tokens,
                                            const int* total, std::int64_t D) {
  constexpr int K = pack_elements<G, T>();
  __shared__ int bucket[3];  // token, begin, end; begin = -1: this slot owns no row
  __shared__ int positions[kEmbeddingBucketShared];
  const int s = blockIdx.x;
  if (threadIdx.x == 0) {
    bucket[1] = -1;
    if (s < *total) {
      const int token = tokens[sorted[s]];
      const int begin = offsets[token];
      if (s == begin) {
        bucket[0] = token;
        bucket[1] = begin;
        bucket[2] = offsets[token + 1];
      }
    }
  }
  __syncthreads();
  const int begin = bucket[1];
  if (begin < 0) return;  // the whole block leaves: no barrier follows for it
  const int token = bucket[0], end = bucket[2];
  const int staged = end - begin < kEmbeddingBucketShared ? end - begin : kEmbeddingBucketShared;
  for (int i = static_cast<int>(threadIdx.x); i < staged; i += static_cast<int>(blockDim.x))
    positions[i] = sorted[begin + i];
  __syncthreads();
  auto position = [&](int i) { return i - begin < staged ? positions[i - begin] : sorted[i]; };
  G* row = dtable + static_cast<std::int64_t>(token) * D;
  const T* first = dout + static_cast<std::int64_t>(position(begin)) * D;
  RowSplit split = split_rows16<K>(D, static_cast<const G*>(row), first);
  if (split.body_end > split.head && (D * static_cast<std::int64_t>(sizeof(T))) % 16 != 0) {
    for (int i = begin + 1; i < end; ++i)
      if (!same_phase16(dout + static_cast<std::int64_t>(position(i)) * D, first)) split = {0, 0};
  }
  for_each_span<K>(split, D, threadIdx.x, blockDim.x, [&](auto width, std::int64_t d) {
    constexpr int W = decltype(width)::value;
    float acc[W], v[W];
    load_span(acc, row + d);
    for (int i = begin; i < end; ++i) {
      load_span(v, dout + static_cast<std::int64_t>(position(i)) * D + d);
#pragma unroll
      for (int e = 0; e < W; ++e) acc[e] += v[e];
    }
    store_span(row + d, acc);
  });
}

// ---- launchers ----

constexpr int kEmbeddingThreads = 256;

template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* table, std::int64_t N,
                       std::int64_t D, std::int64_t vocab, cudaStream_t stream) {
  if (N <= 0) return;
  launch(embedding_forward_kernel<T>, dim3(static_cast<unsigned>(N)), dim3(kEmbeddingThreads), 0,
         stream, out, tokens, table, D, vocab);
}

// dtable [vocab, D] += scatter of dout [N, D] by tokens, deterministically.
template <typename G, typename T>
void embedding_backward(G* dtable, const T* dout, const std::int32_t* tokens, std::int64_t N,
                        std::int64_t D, std::int64_t vocab, int* workspace, cudaStream_t stream) {
  if (N <= 0) return;
  int* counts = workspace;           // [vocab]
  int* cursor = counts + vocab;      // [vocab]
  int* offsets = cursor + vocab;     // [vocab + 1]
  int* slots = offsets + vocab + 1;  // [N]
  int* sorted = slots + N;           // [N]
  MINITRON_CUDA_CHECK(cudaMemsetAsync(counts, 0, 2 * vocab * sizeof(int), stream));
  const unsigned blocks = static_cast<unsigned>(ceil_div(N, kEmbeddingThreads));
  launch(embedding_count_kernel, dim3(blocks), dim3(kEmbeddingThreads), 0, stream, counts, tokens,
         N, vocab);
  launch(embedding_scan_kernel, dim3(1), dim3(kScanThreads), 0, stream, offsets,
         static_cast<const int*>(counts), vocab);
  launch(embedding_bucket_kernel, dim3(blocks), dim3(kEmbeddingThreads), 0, stream, slots, cursor,
         static_cast<const int*>(offsets), tokens, N, vocab);
  // Invalid tokens were left out, so the buckets may hold fewer than N slots; the kernels
  // below read that total on the device (offsets[vocab]) and skip the unused tail.
  launch(embedding_order_kernel, dim3(blocks), dim3(kEmbeddingThreads), 0, stream, sorted,
         static_cast<const int*>(slots), static_cast<const int*>(offsets), tokens,
         static_cast<const int*>(offsets + vocab));
  launch(embedding_accumulate_kernel<G, T>, dim3(static_cast<unsigned>(N)), dim3(kEmbeddingThreads),
         0, stream, dtable, dout, static_cast<const int*>(sorted), static_cast<const int*>(offsets),
         tokens, static_cast<const int*>(offsets + vocab), D);
}

}  // namespace minitron::cuda
