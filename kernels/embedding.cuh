// Token embedding: forward lookup and a deterministic backward scatter-add.
//
// The backward must not use float atomics (their order, hence the rounding, varies from run to
// run). Instead: (1) each token's positions are counted (integer atomics, whose results do not
// depend on order) and (2) scanned into bucket offsets; (3) a stable radix sort of the positions
// by token, 8 bits a pass, fills the buckets in position order (work linear in N however long a
// bucket: real text's frequent tokens fill buckets of thousands); (4) one block owns each table
// row that received gradient and adds that row's dout rows in position order, exactly the order
// of the CPU reference (kernels/embedding.h).
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

// Step 2 (and each sorting pass's digit offsets): offsets[i] = sum of counts[0 .. i),
// offsets[length] = total. One block walks the counts in tiles of 4096: each thread takes 4
// adjacent counts (kept in registers), the 1024 thread totals are scanned across the block, and
// the tile's offsets are written with the running total of the tiles before: every count is read
// once and every offset written once.
constexpr int kScanThreads = 1024;
constexpr int kScanPerThread = 4;
__global__ void embedding_scan_kernel(int* offsets, const int* counts, std::int64_t length) {
  __shared__ int partial[kScanThreads];
  const int tid = static_cast<int>(threadIdx.x);
  int carry = 0;  // the sum of the counts of the tiles before, the same in every thread
  for (std::int64_t tile = 0; tile < length; tile += kScanThreads * kScanPerThread) {
    const std::int64_t first = tile + static_cast<std::int64_t>(tid) * kScanPerThread;
    int c[kScanPerThread];
    int sum = 0;
#pragma unroll
    for (int e = 0; e < kScanPerThread; ++e) {
      c[e] = first + e < length ? counts[first + e] : 0;
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
      if (first + e < length) offsets[first + e] = running;
      running += c[e];
    }
    carry += partial[kScanThreads - 1];
    __syncthreads();  // every thread has read partial before the next tile rewrites it
  }
  if (tid == 0) offsets[length] = carry;
}

// Step 3: a stable least-significant-digit radix sort of the positions by token, kRadixBits of
// the token a pass, as many passes as vocab's bits need. Each pass is stable (positions with one
// digit keep their order), and the first pass reads the positions in order, so every bucket ends
// in position order: linear work, however many positions a token holds. A token outside
// [0, vocab) sorts as vocab, past every bucket (the buckets hold offsets[vocab] slots; the
// kernels after read no further). A pass is three launches: each block of kRadixThreads
// positions counts its digits (digit-major, so that one scan gives every (digit, block) its
// first slot in order), the scan, and each block writes its positions to those slots, ranked
// within the block in position order.
constexpr int kRadixBits = 8;
constexpr int kRadix = 1 << kRadixBits;
constexpr int kRadixThreads = kRadix;  // one position a thread; thread d also totals digit d
constexpr int kRadixWarps = kRadixThreads / 32;
static_assert(
    kRadix == 256 && kRadixThreads == 256,
    "embedding_workspace_ints (kernels/cuda/device_memory.h) sizes 256 digits a block of 256");

inline int embedding_radix_passes(std::int64_t vocab) {
  int bits = 0;  // bits of the largest key, vocab
  while ((vocab >> bits) != 0) ++bits;
  return (bits + kRadixBits - 1) / kRadixBits;
}

__device__ inline int radix_key(std::int32_t token, std::int64_t vocab) {
  return token >= 0 && token < vocab ? token : static_cast<int>(vocab);
}

// Ranks the block's keys by digit: returns this thread's rank among the block's keys with its
// digit (lower threads first) and sets `total` to the block's number of keys with digit
// threadIdx.x. A warp's lanes with digit d are found from one ballot per digit bit; each lane
// writes the warp's counts of digits lane, lane + 32, ... (so every entry of per_warp is written,
// none needs zeroing), then thread d turns the warps' counts of digit d into each warp's first
// rank. Every thread of the block calls it (the ballots and barriers need them all); one without
// a key (has_key false: past N) is left out of every count.
__device__ inline int radix_block_rank(int digit, bool has_key,
                                       int (&per_warp)[kRadixWarps][kRadix], int& total) {
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32, warp = tid / 32;
  const unsigned keyed = __ballot_sync(0xffffffffu, has_key);
  unsigned votes[kRadixBits];
#pragma unroll
  for (int b = 0; b < kRadixBits; ++b) votes[b] = __ballot_sync(0xffffffffu, (digit >> b) & 1);
  auto lanes_with = [&](int d) {  // the warp's lanes with a key and digit d
    unsigned lanes = keyed;
#pragma unroll
    for (int b = 0; b < kRadixBits; ++b) lanes &= (d >> b) & 1 ? votes[b] : ~votes[b];
    return lanes;
  };
  for (int d = lane; d < kRadix; d += 32) per_warp[warp][d] = __popc(lanes_with(d));
  const int rank_in_warp = __popc(lanes_with(digit) & ((1u << lane) - 1u));
  __syncthreads();  // every warp's counts written
  int running = 0;
  for (int w = 0; w < kRadixWarps; ++w) {
    const int count = per_warp[w][tid];
    per_warp[w][tid] = running;
    running += count;
  }
  total = running;
  __syncthreads();
  return per_warp[warp][digit] + rank_in_warp;
}

// A pass's first launch: digit_counts[d * blocks + b] = block b's keys with digit d. Keys are
// tokens (the first pass) or the previous pass's keys.
__global__ void embedding_radix_count_kernel(int* digit_counts, const std::int32_t* keys,
                                             std::int64_t N, std::int64_t vocab, int shift) {
  __shared__ int per_warp[kRadixWarps][kRadix];
  const std::int64_t n = blockIdx.x * static_cast<std::int64_t>(kRadixThreads) + threadIdx.x;
  const bool has_key = n < N;
  const int digit = has_key ? (radix_key(keys[n], vocab) >> shift) & (kRadix - 1) : 0;
  int total = 0;
  radix_block_rank(digit, has_key, per_warp, total);
  digit_counts[threadIdx.x * static_cast<std::int64_t>(gridDim.x) + blockIdx.x] = total;
}

// A pass's last launch: each key and its position go to the slot that the scan of digit_counts
// gave its (digit, block), plus its rank within the block. positions null: the first pass, whose
// keys are the tokens at positions 0 .. N-1. keys_out null: the last pass, whose keys no one reads.
__global__ void embedding_radix_scatter_kernel(int* keys_out, int* positions_out,
                                               const int* digit_offsets, const std::int32_t* keys,
                                               const int* positions, std::int64_t N,
                                               std::int64_t vocab, int shift) {
  __shared__ int per_warp[kRadixWarps][kRadix];
  __shared__ int first_slot[kRadix];
  const std::int64_t n = blockIdx.x * static_cast<std::int64_t>(kRadixThreads) + threadIdx.x;
  const bool has_key = n < N;
  const int key = has_key ? radix_key(keys[n], vocab) : 0;
  const int digit = (key >> shift) & (kRadix - 1);
  first_slot[threadIdx.x] =
      digit_offsets[threadIdx.x * static_cast<std::int64_t>(gridDim.x) + blockIdx.x];
  int total = 0;
  const int rank =
      radix_block_rank(digit, has_key, per_warp, total);  // its barriers cover first_slot
  if (!has_key) return;
  const int slot = first_slot[digit] + rank;
  positions_out[slot] = positions == nullptr ? static_cast<int>(n) : positions[n];
  if (keys_out != nullptr) keys_out[slot] = key;
}

// Step 4: one block per bucket slot; the block at the first slot of a bucket owns that table
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

// dtable [vocab, D] += scatter of dout [N, D] by tokens, deterministically. workspace holds
// embedding_workspace_ints(N, vocab) ints (kernels/cuda/device_memory.h).
template <typename G, typename T>
void embedding_backward(G* dtable, const T* dout, const std::int32_t* tokens, std::int64_t N,
                        std::int64_t D, std::int64_t vocab, int* workspace, cudaStream_t stream) {
  if (N <= 0) return;
  const std::int64_t radix_blocks = ceil_div(N, kRadixThreads);
  const std::int64_t digits = kRadix * radix_blocks;
  int* counts = workspace;                     // [vocab]
  int* offsets = counts + vocab;               // [vocab + 1]
  int* digit_counts = offsets + vocab + 1;     // [digits]
  int* digit_offsets = digit_counts + digits;  // [digits + 1]
  int* sorted = digit_offsets + digits + 1;    // [N]
  // The passes alternate between two (keys, positions) buffers so that the last one writes its
  // positions to sorted.
  int* keys[2] = {sorted + N, sorted + 2 * N};   // [N] each
  int* positions[2] = {sorted, sorted + 3 * N};  // [N] each
  MINITRON_CUDA_CHECK(cudaMemsetAsync(counts, 0, vocab * sizeof(int), stream));
  const unsigned blocks = static_cast<unsigned>(ceil_div(N, kEmbeddingThreads));
  launch(embedding_count_kernel, dim3(blocks), dim3(kEmbeddingThreads), 0, stream, counts, tokens,
         N, vocab);
  launch(embedding_scan_kernel, dim3(1), dim3(kScanThreads), 0, stream, offsets,
         static_cast<const int*>(counts), vocab);
  const int passes = embedding_radix_passes(vocab);
  for (int pass = 0; pass < passes; ++pass) {
    const int to = (passes - 1 - pass) % 2, from = 1 - to;
    const std::int32_t* keys_in = pass == 0 ? tokens : keys[from];
    const int* positions_in = pass == 0 ? nullptr : positions[from];
    int* keys_out = pass == passes - 1 ? nullptr : keys[to];
    const int shift = pass * kRadixBits;
    launch(embedding_radix_count_kernel, dim3(static_cast<unsigned>(radix_blocks)),
           dim3(kRadixThreads), 0, stream, digit_counts, keys_in, N, vocab, shift);
    launch(embedding_scan_kernel, dim3(1), dim3(kScanThreads), 0, stream, digit_offsets,
           static_cast<const int*>(digit_counts), digits);
    launch(embedding_radix_scatter_kernel, dim3(static_cast<unsigned>(radix_blocks)),
           dim3(kRadixThreads), 0, stream, keys_out, positions[to],
           static_cast<const int*>(digit_offsets), keys_in, positions_in, N, vocab, shift);
  }
  // Invalid tokens were sorted past the buckets, which may hold fewer than N slots; the kernel
  // below reads that total on the device (offsets[vocab]) and skips the unused tail.
  launch(embedding_accumulate_kernel<G, T>, dim3(static_cast<unsigned>(N)), dim3(kEmbeddingThreads),
         0, stream, dtable, dout, static_cast<const int*>(sorted), static_cast<const int*>(offsets),
         tokens, static_cast<const int*>(offsets + vocab), D);
}

}  // namespace minitron::cuda
