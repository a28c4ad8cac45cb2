// Tensor-core causal attention for bf16 (head_dim a multiple of 16): the tile and fragment helpers
// that the FlashAttention-2-class forward (kernels/attention_forward_mma.cuh) and backward
// (kernels/attention_backward_mma.cuh) share, on mma.sync m16n8k16 through kernels/mma.cuh.
// kernels/attention.cuh holds the CUDA-core kernels (fp32 storage) and the public launchers, which
// dispatch to both for bf16.
//
// Layout as in attention.cuh: q [B*Tq, Hq*hd], k/v [B*Tk, Hkv*hd] (or strided views, each tensor
// with its own row stride), lse fp32 [B, Hq, Tq] (natural log); query head h reads KV head
// h / (Hq / Hkv) in place.
//
// Common shape of the kernels: warps own 16-row m-tiles of the operand they accumulate for
// (queries for the forward and dq, keys for dk/dv; the shapes are in each kernel's file), so that
// their fp32 accumulators stay in registers; the other operand streams through shared memory in
// tiles, double-buffered: cp.async (kernels/async_copy.cuh) loads tile n + 1 while tile n is
// computed, each tile one commit group, waited for with wait_group 1 and a __syncthreads. Shared
// rows are padded by 16 bytes so that the 8 row addresses of an ldmatrix hit 8 different 16-byte
// bank groups. An accumulator's per-lane layout (rows g and g+8, columns 2t, 2t+1 of each 8-column
// block) is exactly the A-fragment layout of the next product, so P and dS go from one mma to
// the next without shared memory, rounded to bf16 as FlashAttention does.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/async_copy.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/mma.cuh"
#include "kernels/packed.cuh"
#include "kernels/rope.cuh"

namespace minitron::cuda {

// Shared with the CUDA-core kernels of attention.cuh (which includes this file).
constexpr int kAttentionThreads = 128;  // 4 warps
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int kMmaWarpRows = 16;  // rows of one m-tile
template <int HD>
inline constexpr int kMmaSmemStride = HD + 8;  // 16 bytes of padding: rows start 4 banks apart

// Packed documents (kernels/attention.h), for every attention kernel: `positions` points at one
// batch row's int32 positions (restarting at 0 in each document), or is null (one document per
// row, keys from 0). Document starts t - positions[t] never decrease along a row.

// The first key query t sees: its document's first token.
__device__ __forceinline__ int attention_first_key(const std::int32_t* positions, int t) {
  return positions ? t - positions[t] : 0;
}

// The first `tile`-aligned key tile that queries q0 onwards need: q0's document start is the
// smallest of theirs, and every tile before it lies wholly in earlier documents.
__device__ __forceinline__ int attention_first_key_tile(const std::int32_t* positions, int q0,
                                                        int tile) {
  return attention_first_key(positions, q0) / tile * tile;
}

// The end of the query tiles (`tile` queries each, from tile_begin) that may see a key up to
// last_key: the first tile whose first query's document starts after last_key (it and every
// later one see none of those keys), found by bisection; Tq without positions. Needs
// tile_begin's first key <= last_key (true when tile_begin <= the block's first key).
__device__ __forceinline__ int attention_query_end(const std::int32_t* positions, int tile_begin,
                                                   int Tq, int tile, int last_key) {
  if (!positions) return Tq;
  int lo = tile_begin / tile, hi = (Tq + tile - 1) / tile;  // the answer is in (lo, hi]
  while (hi - lo > 1) {
    const int mid = lo + (hi - lo) / 2;
    if (attention_first_key(positions, mid * tile) > last_key)
      hi = mid;
    else
      lo = mid;
  }
  return hi * tile < Tq ? hi * tile : Tq;
}

// Copies rows [row0, row0 + rows) of one head (HD contiguous elements at `base + r * stride`)
// into shared memory rows of S elements, zero-filling rows at or beyond `limit`. Shared by every
// attention kernel (the CUDA-core ones of attention.cuh too). `packed`: every global row starts
// on a 16-byte boundary (the launcher checked the base pointers with rows_aligned16 and the row
// strides with strides_aligned16), so one 16-byte load moves a pack; it is stored whole where
// shared rows are 16-byte aligned too (the tensor-core tiles), element by element otherwise.
template <typename T, int HD, int S>
__device__ __forceinline__ void attention_fill_tile(T* tile, const T* base, std::int64_t stride,
                                                    int row0, int rows, int limit, bool packed) {
  constexpr int K = Packed128<T>::kSize;
  if (packed) {
    static_assert(HD % K == 0, "packed rows are whole 16-byte packs");
    constexpr int P = HD / K;
    for (int idx = threadIdx.x; idx < rows * P; idx += blockDim.x) {
      const int r = idx / P, d = idx % P * K;
      Packed128<T> v;
      if (row0 + r < limit) {
        v = load128(base + static_cast<std::int64_t>(row0 + r) * stride + d);
      } else {
#pragma unroll
        for (int e = 0; e < K; ++e) v.payload[e] = from_float<T>(0.0f);
      }
      if constexpr (S * sizeof(T) % 16 == 0) {
        store128_shared(tile + r * S + d, v);
      } else {
#pragma unroll
        for (int e = 0; e < K; ++e) tile[r * S + d + e] = v.payload[e];
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < rows * HD; idx += blockDim.x) {
      const int r = idx / HD, d = idx % HD;
      tile[r * S + d] = row0 + r < limit ? base[static_cast<std::int64_t>(row0 + r) * stride + d]
                                         : from_float<T>(0.0f);
    }
  }
}

// The tensor-core tiles' fill, asynchronous where rows are packed: one cp.async per 16-byte pack
// (rows at or beyond `limit` zero-filled by the copy itself, reading nothing; the head's row 0
// stands in as their valid, aligned source address). The caller commits the copies into a group
// and, before reading the tile, waits for that group and meets the block at a __syncthreads.
// Unpacked rows (a misaligned tensor) are copied synchronously, which the same barrier publishes.
template <int HD>
__device__ __forceinline__ void mma_load_tile(bf16* tile, const bf16* base, std::int64_t stride,
                                              int row0, int rows, int limit, bool packed) {
  constexpr int S = kMmaSmemStride<HD>;
  if (packed) {
    constexpr int K = Packed128<bf16>::kSize;
    static_assert(HD % K == 0 && S * sizeof(bf16) % 16 == 0, "tiles are whole 16-byte packs");
    constexpr int P = HD / K;
    for (int idx = threadIdx.x; idx < rows * P; idx += blockDim.x) {
      const int r = idx / P, d = idx % P * K;
      const bool inside = row0 + r < limit;
      const bf16* source = inside ? base + static_cast<std::int64_t>(row0 + r) * stride + d : base;
      cp_async16(tile + r * S + d, source, !inside);
    }
  } else {
    attention_fill_tile<bf16, HD, S>(tile, base, stride, row0, rows, limit, false);
  }
}

// RoPE on a landed tile of Q (rows `rows` of a shared tile, row r being row row0 + r of a batch
// row whose positions start at `positions`; without them, at position row0 + r), in place, and
// the rotated rows written back to where they came from (HD elements at `base + row * stride`,
// rows at or past `limit` left out): the rotation of kernels/rope.cuh's kernel, the same
// arithmetic, so both equal rope_forward's rows bit for bit. Each thread stores the pair it
// rotated (a warp writes 64 consecutive bytes of each half-head): a separate pass of 16-byte
// copies needs registers that the forward kernel does not have. The caller meets the block at a
// __syncthreads before (the tile has landed) and lets its next barrier publish the rotated tile.
template <int HD>
__device__ __forceinline__ void mma_rope_tile(bf16* tile, bf16* base, std::int64_t stride, int row0,
                                              int rows, int limit, const float* inv_freq,
                                              const std::int32_t* positions) {
  constexpr int S = kMmaSmemStride<HD>, H = HD / 2;
  static_assert(H <= kAttentionThreads, "a thread per channel pair of a row");
  const int valid = limit - row0 < rows ? limit - row0 : rows;
  // Thread (i, r0) rotates pair i of rows r0, r0 + step, ...: its frequency is read once.
  const int step = static_cast<int>(blockDim.x) / H, i = threadIdx.x % H;
  const int r0 = static_cast<int>(threadIdx.x) / H;
  if (r0 >= step) return;
  const float frequency = inv_freq[i];
#pragma unroll 1  // one pair at a time: the kernels around it sit at their register limit
  for (int r = r0; r < valid; r += step) {
    float s, c;
    rope_sincos(rope_position(positions, row0 + r) * frequency, &s, &c);
    bf16* x1 = tile + r * S + i;
    float a = to_float(x1[0]), b = to_float(x1[H]);
    rope_rotate_pair(a, b, s, c);
    x1[0] = from_float<bf16>(a);
    x1[H] = from_float<bf16>(b);
    bf16* g1 = base + static_cast<std::int64_t>(row0 + r) * stride + i;
    g1[0] = x1[0];
    g1[H] = x1[H];
  }
}

// The A fragment of the 16x16 block at `at` (row-major, row stride S): ldmatrix x4 with
// matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) = regs 0..3.
template <int S>
__device__ __forceinline__ mma::FragmentA ldsm_a(const bf16* at, int lane) {
  mma::FragmentA a;
  mma::ldmatrix_x4(a.reg, at + (lane % 8 + 8 * (lane / 8 % 2)) * S + 8 * (lane / 16));
  return a;
}

// B fragments of two adjacent 8-column blocks of B (k 16 deep) stored n-major: row n of the
// shared tile at `at` holds B[k][n] for consecutive k (K for S = Q K^T, V for dP = dO V^T).
template <int S>
__device__ __forceinline__ void ldsm_b_pair(mma::FragmentB& b0, mma::FragmentB& b1, const bf16* at,
                                            int lane) {
  std::uint32_t r[4];
  mma::ldmatrix_x4(r, at + (lane % 8 + 8 * (lane / 16)) * S + 8 * (lane / 8 % 2));
  b0.reg[0] = r[0], b0.reg[1] = r[1], b1.reg[0] = r[2], b1.reg[1] = r[3];
}

// The same for B stored k-major (row k holds B[k][n] for consecutive n: V for O = P V, K for
// dQ = dS K): ldmatrix .trans turns 8x8 blocks of rows into the column-pair layout.
template <int S>
__device__ __forceinline__ void ldsm_b_pair_trans(mma::FragmentB& b0, mma::FragmentB& b1,
                                                  const bf16* at, int lane) {
  std::uint32_t r[4];
  mma::ldmatrix_x4_trans(r, at + (lane % 8 + 8 * (lane / 8 % 2)) * S + 8 * (lane / 16));
  b0.reg[0] = r[0], b0.reg[1] = r[1], b1.reg[0] = r[2], b1.reg[1] = r[3];
}

// Accumulators of columns 16c..16c+7 (`lo`) and 16c+8..16c+15 (`hi`) as the A fragment of
// k-chunk c of the next product, rounded to bf16.
__device__ __forceinline__ mma::FragmentA accumulators_as_a(const mma::Accumulator& lo,
                                                            const mma::Accumulator& hi) {
  mma::FragmentA a;
  a.reg[0] = mma::pack_bf16x2(from_float<bf16>(lo.value[0]), from_float<bf16>(lo.value[1]));
  a.reg[1] = mma::pack_bf16x2(from_float<bf16>(lo.value[2]), from_float<bf16>(lo.value[3]));
  a.reg[2] = mma::pack_bf16x2(from_float<bf16>(hi.value[0]), from_float<bf16>(hi.value[1]));
  a.reg[3] = mma::pack_bf16x2(from_float<bf16>(hi.value[2]), from_float<bf16>(hi.value[3]));
  return a;
}

// acc[0 .. HD/8) += A B for one 16-deep k-chunk, where B is 16 rows of a k-major shared tile
// (`b_rows`: row k holds B[k][0 .. HD)): O += P V, dV += P^T dO, dK += dS^T Q, dQ += dS K.
template <int HD>
__device__ __forceinline__ void mma_accumulate_rows(mma::Accumulator (&acc)[HD / 8],
                                                    const mma::FragmentA& a, const bf16* b_rows,
                                                    int lane) {
  constexpr int S = kMmaSmemStride<HD>;
#pragma unroll
  for (int jp = 0; jp < HD / 16; ++jp) {
    mma::FragmentB b0, b1;
    ldsm_b_pair_trans<S>(b0, b1, b_rows + jp * 16, lane);
    mma::mma_m16n8k16_bf16(acc[2 * jp], a, b0, acc[2 * jp]);
    mma::mma_m16n8k16_bf16(acc[2 * jp + 1], a, b1, acc[2 * jp + 1]);
  }
}

// Stores this lane's part of accumulator row g + 8 * half (columns 8j + 2t, 8j + 2t + 1 of
// every 8-column block), times `scale`, as bf16 into `row`.
template <int HD>
__device__ __forceinline__ void store_accumulator_row(bf16* row,
                                                      const mma::Accumulator (&acc)[HD / 8],
                                                      int half, int t, float scale) {
#pragma unroll
  for (int j = 0; j < HD / 8; ++j) {
    row[j * 8 + 2 * t] = from_float<bf16>(acc[j].value[2 * half] * scale);
    row[j * 8 + 2 * t + 1] = from_float<bf16>(acc[j].value[2 * half + 1] * scale);
  }
}

// As store_accumulator_row, into a row of the shared staging tile (4-byte aligned at every even
// column): each lane's two adjacent bf16 go as one 32-bit store.
template <int HD>
__device__ __forceinline__ void stage_accumulator_row(bf16* row,
                                                      const mma::Accumulator (&acc)[HD / 8],
                                                      int half, int t, float scale) {
#pragma unroll
  for (int j = 0; j < HD / 8; ++j)
    *reinterpret_cast<__nv_bfloat162*>(row + j * 8 + 2 * t) =
        __halves2bfloat162(from_float<bf16>(acc[j].value[2 * half] * scale),
                           from_float<bf16>(acc[j].value[2 * half + 1] * scale));
}

// Stores a warp's 16 accumulator rows (row g + 8 * half times scale[half], as bf16) into rows
// row0 .. row0 + 15 of `dst` (row stride `stride`), leaving out rows at or past `limit`. With
// `packed` (dst rows 16-byte aligned) the rows go through `stage`, 16 shared rows of stride S
// that only this warp uses, so that every global store is a whole 16-byte pack; otherwise each
// lane stores its 2-byte values in place.
// With `rope_inv_freq` (the gradients of rotated q or k rows) the rows go through `stage` and are
// rotated back from there (rope_backward's rotation at the rows' positions: `positions` at the
// batch row's first token, or the row itself) with the rope kernel's arithmetic, each lane
// storing the pairs it rotated, so the rows equal attention's gradient followed by rope_backward
// bit for bit. From the staged bf16 rows rather than the fp32 accumulators: 32 inlined rotations
// beside the accumulators spill.
template <int HD>
__device__ __forceinline__ void store_warp_rows(bf16* dst, std::int64_t stride, int row0, int limit,
                                                const mma::Accumulator (&acc)[HD / 8],
                                                const float (&scale)[2], bf16* stage, bool packed,
                                                int lane, const float* rope_inv_freq = nullptr,
                                                const std::int32_t* positions = nullptr) {
  constexpr int S = kMmaSmemStride<HD>;
  const int g = lane / 4, t = lane % 4;
  if (!packed && !rope_inv_freq) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = row0 + g + 8 * half;
      if (row < limit)
        store_accumulator_row<HD>(dst + static_cast<std::int64_t>(row) * stride, acc, half, t,
                                  scale[half]);
    }
    return;
  }
  __syncwarp();  // every lane is done reading the warp's rows of `stage`
#pragma unroll
  for (int half = 0; half < 2; ++half)
    stage_accumulator_row<HD>(stage + (g + 8 * half) * S, acc, half, t, scale[half]);
  __syncwarp();
  if (rope_inv_freq) {
    // Lane (i, r0) rotates pairs i, i + 32, ... of rows r0, r0 + step, ...: each frequency is
    // read once.
    constexpr int H = HD / 2;
    constexpr int kLanesPerRow = H < kWarpSize ? H : kWarpSize;
    constexpr int kStep = kWarpSize / kLanesPerRow;
    static_assert(kWarpSize % kLanesPerRow == 0, "half a head of 8, 16 or >= 32 pairs");
    const int valid = limit - row0 < kMmaWarpRows ? limit - row0 : kMmaWarpRows;
#pragma unroll
    for (int i = lane % kLanesPerRow; i < H; i += kLanesPerRow) {
      const float frequency = rope_inv_freq[i];
#pragma unroll 1
      for (int r = lane / kLanesPerRow; r < valid; r += kStep) {
        float s, c;
        rope_sincos(rope_position(positions, row0 + r) * frequency, &s, &c);
        const bf16* x1 = stage + r * S + i;
        float a = to_float(x1[0]), b = to_float(x1[H]);
        rope_rotate_pair(a, b, -s, c);
        bf16* d1 = dst + static_cast<std::int64_t>(row0 + r) * stride + i;
        d1[0] = from_float<bf16>(a);
        d1[H] = from_float<bf16>(b);
      }
    }
    return;
  }
  constexpr int K = Packed128<bf16>::kSize;
  constexpr int P = HD / K;  // packs per row
#pragma unroll
  for (int idx = lane; idx < kMmaWarpRows * P; idx += kWarpSize) {
    const int r = idx / P, d = idx % P * K;
    if (row0 + r < limit)
      store128(dst + static_cast<std::int64_t>(row0 + r) * stride + d, load128(stage + r * S + d));
  }
}

// Kernels whose dynamic shared memory exceeds the default 48 KiB must opt in (fp32 tiles of
// head_dim 128 do, and the bf16 backward at head_dim 128). The emulator enforces the same rule.
template <typename Kernel>
void allow_dynamic_shared(Kernel kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    MINITRON_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
}

}  // namespace minitron::cuda
