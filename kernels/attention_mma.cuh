// Tensor-core causal attention for bf16 (head_dim a multiple of 16): FlashAttention-2's backward
// on mma.sync m16n8k16 through kernels/mma.cuh, and the tile helpers it shares with the forward
// (kernels/attention_forward_mma.cuh). kernels/attention.cuh holds the CUDA-core kernels (fp32
// storage) and the public launchers, which dispatch to both for bf16.
//
// Layout as in attention.cuh: q [B*Tq, Hq*hd], k/v [B*Tk, Hkv*hd], lse fp32 [B, Hq, Tq] (natural
// log); query head h reads KV head h / (Hq / Hkv) in place.
//
// Common shape of the backward kernels: 4 warps per block, each warp owns 16 rows of the operand
// it accumulates for (queries for dq, keys for dk/dv), so that its fp32
// accumulators stay in registers; the other operand streams through shared memory in tiles,
// double-buffered: cp.async (kernels/async_copy.cuh) loads tile n + 1 while tile n is computed,
// each tile one commit group, waited for with wait_group 1 and a __syncthreads. Shared rows
// are padded by 16 bytes so that the 8 row addresses of an ldmatrix hit 8 different 16-byte bank
// groups. An accumulator's per-lane layout (rows g and g+8, columns 2t, 2t+1 of each 8-column
// block) is exactly the A-fragment layout of the next product, so P and dS go from one mma to
// the next without shared memory, rounded to bf16 as FlashAttention does.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/async_copy.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/mma.cuh"
#include "kernels/packed.cuh"

namespace minitron::cuda {

// Shared with the CUDA-core kernels of attention.cuh (which includes this file).
constexpr int kAttentionThreads = 128;  // 4 warps
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

constexpr int kMmaWarpRows = 16;                                             // rows a warp owns
constexpr int kMmaBlockRows = kAttentionThreads / kWarpSize * kMmaWarpRows;  // 64
constexpr int kMmaKeyTile = 32;    // keys streamed per step (dq)
constexpr int kMmaQueryTile = 32;  // queries streamed per step (dk/dv)
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

// The backward's two score products for a warp's 16 rows against a tile of NB * 8 rows, both
// over head_dim: s = A0 B0^T and dp = A1 B1^T, where a0/a1 are the warp's rows and b0/b1 the
// tile's (dk/dv: K, V against Q, dO, giving S^T and dP^T; dq: Q, dO against K, V, giving S, dP).
template <int HD, int NB>
__device__ __forceinline__ void mma_score_pair(mma::Accumulator (&s)[NB],
                                               mma::Accumulator (&dp)[NB], const bf16* a0,
                                               const bf16* a1, const bf16* b0_tile,
                                               const bf16* b1_tile, int lane) {
  constexpr int S = kMmaSmemStride<HD>;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    s[nb] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
    dp[nb] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
  }
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) {
    const mma::FragmentA fa0 = ldsm_a<S>(a0 + kc * 16, lane);
    const mma::FragmentA fa1 = ldsm_a<S>(a1 + kc * 16, lane);
#pragma unroll
    for (int np = 0; np < NB / 2; ++np) {
      mma::FragmentB b0, b1;
      ldsm_b_pair<S>(b0, b1, b0_tile + np * 16 * S + kc * 16, lane);
      mma::mma_m16n8k16_bf16(s[2 * np], fa0, b0, s[2 * np]);
      mma::mma_m16n8k16_bf16(s[2 * np + 1], fa0, b1, s[2 * np + 1]);
      ldsm_b_pair<S>(b0, b1, b1_tile + np * 16 * S + kc * 16, lane);
      mma::mma_m16n8k16_bf16(dp[2 * np], fa1, b0, dp[2 * np]);
      mma::mma_m16n8k16_bf16(dp[2 * np + 1], fa1, b1, dp[2 * np + 1]);
    }
  }
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
template <int HD>
__device__ __forceinline__ void store_warp_rows(bf16* dst, std::int64_t stride, int row0, int limit,
                                                const mma::Accumulator (&acc)[HD / 8],
                                                const float (&scale)[2], bf16* stage, bool packed,
                                                int lane) {
  constexpr int S = kMmaSmemStride<HD>;
  const int g = lane / 4, t = lane % 4;
  if (!packed) {
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
  constexpr int K = Packed128<bf16>::kSize;
  constexpr int P = HD / K;  // packs per row
#pragma unroll
  for (int idx = lane; idx < kMmaWarpRows * P; idx += kWarpSize) {
    const int r = idx / P, d = idx % P * K;
    if (row0 + r < limit)
      store128(dst + static_cast<std::int64_t>(row0 + r) * stride + d, load128(stage + r * S + d));
  }
}

// The K/V stream of the forward and dq kernels: KT-key tiles of K then V, double-buffered in
// shared memory (two buffers of [KT][S] K rows then [KT][S] V rows) with one cp.async group per
// tile, so tile n + 1 is in flight while tile n is computed.
template <int HD, int KT>
struct MmaKvStream {
  static constexpr int kBuffer = 2 * KT * kMmaSmemStride<HD>;  // elements of one buffer

  bf16* buffers;
  const bf16* k_head;
  const bf16* v_head;
  std::int64_t k_stride, v_stride;
  int Tk, key_end;
  bool packed;

  // Issues the copies of the tile at keys k0 .. k0 + KT into buffer `slot` (none past key_end).
  __device__ __forceinline__ void load(int slot, int k0) const {
    if (k0 >= key_end) return;
    bf16* buffer = buffers + slot * kBuffer;
    mma_load_tile<HD>(buffer, k_head, k_stride, k0, KT, Tk, packed);
    mma_load_tile<HD>(buffer + KT * kMmaSmemStride<HD>, v_head, v_stride, k0, KT, Tk, packed);
  }

  // Tile n (keys from k0), ready for every thread: the block is done with tile n - 1, whose
  // buffer tile n + 1 now goes into; then tile n is waited for. The commit may close an empty
  // group (after the last tile): one group per tile keeps wait_group 1 right. Returns tile n's
  // K rows; its V rows follow KT rows later.
  __device__ __forceinline__ const bf16* advance(int n, int k0) const {
    __syncthreads();
    load((n + 1) % 2, k0 + KT);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    return buffers + n % 2 * kBuffer;
  }
};

// ---- kernels ----

// Backward, FlashAttention-2's math in two deterministic kernels (no atomics: every gradient
// element is accumulated by one lane in a fixed order). Both recompute P = exp2(S * scale_log2 -
// lse_log2) from the saved lse, dP = dO V^T and dS = P o (dP - D) with D = rowsum(dO o O) (the
// dot kernel of attention.cuh, run first); the softmax scale is applied once, to dq and dk.
//
// Rounding (beyond fp32 accumulation): P and dS are rounded to bf16 (relative error <= 2^-8
// each) before they multiply dO, Q or K, so |error dV_j| <= 2^-8 sum_i P_ij |dO_i|,
// |error dK_j| <= 2^-8 scale sum_i |dS_ij| |q_i| and |error dQ_i| <= 2^-8 scale sum_j |dS_ij| |k_j|
// (elementwise over dims), plus one bf16 rounding of each output.

// dk/dv: a warp owns 16 keys of one KV head (a block 64) and keeps their dK and dV in registers
// (HD / 2 floats each per lane); it loops over the group's query heads and their 32-query tiles,
// which stream (double-buffered) through shared memory with their lse and D:
//   S^T = K Q^T, P^T = exp2(S^T * scale_log2 - lse_log2), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T o (dP^T - D), dK += dS^T Q.
// K and V fragments are read from shared memory per tile (ldmatrix) rather than held in
// registers, which keeps head_dim 128 free of spills. grid (ceil(Tk / 64), Hkv, B).
template <int HD>
__global__ void attention_backward_dkv_mma_kernel(
    bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* D, const bf16* q,
    const bf16* k, const bf16* v, const std::int32_t* positions, int Tq, int Tk, int Hq, int Hkv,
    std::int64_t q_stride, std::int64_t k_stride, std::int64_t v_stride, std::int64_t do_stride,
    std::int64_t dk_stride, std::int64_t dv_stride, float scale, bool packed) {
  constexpr int S = kMmaSmemStride<HD>;
  constexpr int NB = kMmaQueryTile / 8;  // 8-query blocks of a tile
  constexpr int OB = HD / 8;             // 8-dim blocks of dK and dV
  constexpr int QT = kMmaQueryTile;
  MINITRON_DYNAMIC_SHARED(bf16, k_s);   // [64][S]
  bf16* v_s = k_s + kMmaBlockRows * S;  // [64][S]
  // Two buffers of a Q tile and a dO tile ([QT][S] each), filled alternately: query tile n + 1
  // loads while tile n is computed; their lse (log2 units) and D ([QT] floats each) likewise,
  // and their document starts ([QT] ints).
  bf16* qdo_s = v_s + kMmaBlockRows * S;
  constexpr int kBuffer = 2 * QT * S;  // elements of one buffer (Q then dO)
  float* stats_s = reinterpret_cast<float*>(qdo_s + 2 * kBuffer);  // [2][lse QT, D QT]
  int* first_s = reinterpret_cast<int*>(stats_s + 2 * 2 * QT);     // [2][QT]

  // Key tiles in order: key tile j is seen by every query from j on, so the early (low
  // blockIdx.x) tiles are the heavy ones and already start first.
  const int b = blockIdx.z, hk = blockIdx.y, j0 = blockIdx.x * kMmaBlockRows;
  const int group = Hq / Hkv, offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t key_row0 = static_cast<std::int64_t>(b) * Tk;  // the batch's first key row
  const float scale_log2 = scale * kLog2e;

  const int first_query = j0 - offset > 0 ? j0 - offset : 0;  // the first that sees key j0
  const int tile_begin = first_query / QT * QT;
  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;
  // Packed documents: the query tiles after the block's last key's document see none of them.
  const int last_key = (j0 + kMmaBlockRows < Tk ? j0 + kMmaBlockRows : Tk) - 1;
  const int query_end = attention_query_end(row_positions, tile_begin, Tq, QT, last_key);
  // Query tile (h, q0) into buffer `p`: Q and dO by cp.async (the caller commits), lse and D by
  // plain loads, which the same barrier after the wait publishes.
  auto load_query_tile = [&](int p, int h, int q0) {
    const std::int64_t query_row0 = static_cast<std::int64_t>(b) * Tq;
    bf16* buffer = qdo_s + p * kBuffer;
    mma_load_tile<HD>(buffer, q + query_row0 * q_stride + h * HD, q_stride, q0, QT, Tq, packed);
    mma_load_tile<HD>(buffer + QT * S, dout + query_row0 * do_stride + h * HD, do_stride, q0, QT,
                      Tq, packed);
    if (static_cast<int>(threadIdx.x) < QT) {
      const std::int64_t stat0 = (static_cast<std::int64_t>(b) * Hq + h) * Tq;
      const int i = static_cast<int>(threadIdx.x), query = q0 + i;
      stats_s[p * 2 * QT + i] = query < Tq ? lse[stat0 + query] * kLog2e : 0.0f;
      stats_s[p * 2 * QT + QT + i] = query < Tq ? D[stat0 + query] : 0.0f;
      first_s[p * QT + i] = query < Tq ? attention_first_key(row_positions, query) : 0;
    }
  };
  // One group: K, V and the first query tile (first_query < Tq, so every block has one).
  mma_load_tile<HD>(k_s, k + key_row0 * k_stride + hk * HD, k_stride, j0, kMmaBlockRows, Tk,
                    packed);
  mma_load_tile<HD>(v_s, v + key_row0 * v_stride + hk * HD, v_stride, j0, kMmaBlockRows, Tk,
                    packed);
  load_query_tile(0, hk * group, tile_begin);
  cp_async_commit();

  mma::Accumulator dk_acc[OB], dv_acc[OB];
#pragma unroll
  for (int j = 0; j < OB; ++j) {
    dk_acc[j] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
    dv_acc[j] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
  }

  const int key0 = j0 + warp * kMmaWarpRows;  // this warp's first key
  const int keys[2] = {key0 + g, key0 + g + 8};
  const bf16* k_warp = k_s + warp * kMmaWarpRows * S;
  const bf16* v_warp = v_s + warp * kMmaWarpRows * S;

  int n = 0;  // query tiles so far, over all heads of the group: tile n is in buffer n % 2
  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    for (int q0 = tile_begin; q0 < query_end; q0 += QT, ++n) {
      // As in the forward: the block is done with tile n - 1's buffer, the next tile (of this
      // head, or the next head's first) goes in flight (an empty group after the last keeps one
      // group per tile), tile n is waited for.
      __syncthreads();
      if (q0 + QT < query_end)
        load_query_tile((n + 1) % 2, h, q0 + QT);
      else if (h + 1 < (hk + 1) * group)
        load_query_tile((n + 1) % 2, h + 1, tile_begin);
      cp_async_commit();
      cp_async_wait<1>();
      __syncthreads();  // every thread's part of tile n (and K, V) is visible
      const bf16* q_s = qdo_s + n % 2 * kBuffer;
      const bf16* do_s = q_s + QT * S;
      const float* lse_s = stats_s + n % 2 * 2 * QT;
      const float* d_s = lse_s + QT;
      const int* tile_first = first_s + n % 2 * QT;
      // Keys past the sequence, all after the tile's last query, or all before the document of
      // its first query (the smallest start): nothing visible (whole warp).
      if (key0 >= Tk || key0 > q0 + QT - 1 + offset || key0 + 15 < tile_first[0]) continue;

      mma::Accumulator s[NB], dp[NB];  // S^T and dP^T
      mma_score_pair<HD>(s, dp, k_warp, v_warp, q_s, do_s, lane);

      // P^T into s, dS^T into dp: value r is (key g + 8 (r / 2), query 8 nb + 2t + r % 2).
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int i = nb * 8 + 2 * t + r % 2, query = q0 + i;
          const bool visible = query < Tq && keys[r / 2] < Tk && keys[r / 2] <= query + offset &&
                               keys[r / 2] >= tile_first[i];
          const float p = visible ? exp2f(s[nb].value[r] * scale_log2 - lse_s[i]) : 0.0f;
          s[nb].value[r] = p;
          dp[nb].value[r] = p * (dp[nb].value[r] - d_s[i]);
        }
      }

      // dV += P^T dO and dK += dS^T Q over the tile's queries, 16 at a time.
#pragma unroll
      for (int c = 0; c < QT / 16; ++c) {
        mma_accumulate_rows<HD>(dv_acc, accumulators_as_a(s[2 * c], s[2 * c + 1]),
                                do_s + c * 16 * S, lane);
        mma_accumulate_rows<HD>(dk_acc, accumulators_as_a(dp[2 * c], dp[2 * c + 1]),
                                q_s + c * 16 * S, lane);
      }
    }
  }

  // The warp's own K and V rows (no other warp reads them) stage dK and dV.
  const float dk_scale[2] = {scale, scale}, dv_scale[2] = {1.0f, 1.0f};
  store_warp_rows<HD>(dk + key_row0 * dk_stride + hk * HD, dk_stride, key0, Tk, dk_acc, dk_scale,
                      k_s + warp * kMmaWarpRows * S, packed, lane);
  store_warp_rows<HD>(dv + key_row0 * dv_stride + hk * HD, dv_stride, key0, Tk, dv_acc, dv_scale,
                      v_s + warp * kMmaWarpRows * S, packed, lane);
}

// dq: a warp owns 16 query rows (a block 64) and keeps their dQ in registers; keys stream
// through shared memory 32 at a time (double-buffered): S = Q K^T, P, dP = dO V^T,
// dS = P o (dP - D), dQ += dS K. grid (ceil(Tq / 64), Hq, B).
template <int HD>
__global__ void attention_backward_dq_mma_kernel(bf16* dq, const bf16* dout, const float* lse,
                                                 const float* D, const bf16* q, const bf16* k,
                                                 const bf16* v, const std::int32_t* positions,
                                                 int Tq, int Tk, int Hq, int Hkv,
                                                 std::int64_t q_stride, std::int64_t k_stride,
                                                 std::int64_t v_stride, std::int64_t do_stride,
                                                 std::int64_t dq_stride, float scale, bool packed) {
  constexpr int S = kMmaSmemStride<HD>;
  constexpr int NB = kMmaKeyTile / 8;
  constexpr int OB = HD / 8;
  constexpr int KT = kMmaKeyTile;
  MINITRON_DYNAMIC_SHARED(bf16, q_s);    // [64][S]
  bf16* do_s = q_s + kMmaBlockRows * S;  // [64][S]
  // Two buffers of a K tile and a V tile ([KT][S] each), filled alternately: tile n + 1 loads
  // while tile n is computed.
  bf16* kv_s = do_s + kMmaBlockRows * S;

  // Query tiles in reverse, heaviest first, as in the forward.
  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kMmaBlockRows;
  const int hk = h / (Hq / Hkv), offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t query_row0 = static_cast<std::int64_t>(b) * Tq;  // the batch's first row
  const bf16* k_head = k + static_cast<std::int64_t>(b) * Tk * k_stride + hk * HD;
  const bf16* v_head = v + static_cast<std::int64_t>(b) * Tk * v_stride + hk * HD;
  const std::int64_t stat0 = (static_cast<std::int64_t>(b) * Hq + h) * Tq;
  const float scale_log2 = scale * kLog2e;

  const int last_query = (q0 + kMmaBlockRows < Tq ? q0 + kMmaBlockRows : Tq) - 1;
  const int key_end = last_query + offset + 1 < Tk ? last_query + offset + 1 : Tk;
  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;
  const int key_begin = attention_first_key_tile(row_positions, q0, KT);
  // One group: Q, dO and tile 0 into buffer 0.
  mma_load_tile<HD>(q_s, q + query_row0 * q_stride + h * HD, q_stride, q0, kMmaBlockRows, Tq,
                    packed);
  mma_load_tile<HD>(do_s, dout + query_row0 * do_stride + h * HD, do_stride, q0, kMmaBlockRows, Tq,
                    packed);
  const MmaKvStream<HD, KT> stream{kv_s, k_head, v_head, k_stride, v_stride, Tk, key_end, packed};
  stream.load(0, key_begin);
  cp_async_commit();

  const int row0 = q0 + warp * kMmaWarpRows;
  const int rows[2] = {row0 + g, row0 + g + 8};
  float row_lse[2], row_D[2];
  int first_key[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    row_lse[half] = rows[half] < Tq ? lse[stat0 + rows[half]] * kLog2e : 0.0f;
    row_D[half] = rows[half] < Tq ? D[stat0 + rows[half]] : 0.0f;
    first_key[half] = rows[half] < Tq ? attention_first_key(row_positions, rows[half]) : 0;
  }
  const int warp_first_key = row0 < Tq ? attention_first_key(row_positions, row0) : 0;
  mma::Accumulator dq_acc[OB];
#pragma unroll
  for (int j = 0; j < OB; ++j) dq_acc[j] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};

  const bf16* q_warp = q_s + warp * kMmaWarpRows * S;
  const bf16* do_warp = do_s + warp * kMmaWarpRows * S;

  for (int k0 = key_begin, n = 0; k0 < key_end; k0 += KT, ++n) {
    const bf16* k_s = stream.advance(n, k0);  // tile n (and, with tile 0, Q and dO)
    const bf16* v_s = k_s + KT * S;
    // Rows past the sequence, all before this tile's first key, or all in documents that start
    // after its last: nothing visible (whole warp).
    if (row0 >= Tq || k0 > row0 + 15 + offset || k0 + KT <= warp_first_key) continue;

    mma::Accumulator s[NB], dp[NB];  // S and dP
    mma_score_pair<HD>(s, dp, q_warp, do_warp, k_s, v_s, lane);

    // dS into dp: value r is (row g + 8 (r / 2), key 8 nb + 2t + r % 2).
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int key = k0 + nb * 8 + 2 * t + r % 2, half = r / 2;
        const bool visible =
            rows[half] < Tq && key < Tk && key <= rows[half] + offset && key >= first_key[half];
        const float p = visible ? exp2f(s[nb].value[r] * scale_log2 - row_lse[half]) : 0.0f;
        dp[nb].value[r] = p * (dp[nb].value[r] - row_D[half]);
      }
    }

    // dQ += dS K over the tile's keys, 16 at a time.
#pragma unroll
    for (int c = 0; c < KT / 16; ++c) {
      mma_accumulate_rows<HD>(dq_acc, accumulators_as_a(dp[2 * c], dp[2 * c + 1]), k_s + c * 16 * S,
                              lane);
    }
  }

  // The warp's own Q rows (no other warp reads them) stage dQ.
  const float dq_scale[2] = {scale, scale};
  store_warp_rows<HD>(dq + query_row0 * dq_stride + h * HD, dq_stride, row0, Tq, dq_acc, dq_scale,
                      q_s + warp * kMmaWarpRows * S, packed, lane);
}

// ---- launchers ----

// Kernels whose dynamic shared memory exceeds the default 48 KiB must opt in (fp32 tiles of
// head_dim 128 do, and the bf16 backward at head_dim 128). The emulator enforces the same rule.
template <typename Kernel>
void allow_dynamic_shared(Kernel kernel, std::size_t bytes) {
  if (bytes > 48 * 1024)
    MINITRON_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(bytes)));
}

// Shared-memory bytes of each kernel (also printed by bench/gpu's register report). The streamed
// tiles are double-buffered (cp.async), so each kernel holds 256 rows of S = head_dim + 8 bf16
// (dk/dv 768 bytes of lse, D and document starts besides): dq Q and dO of 64 + 2 x (K, V) tiles
// of 32, dk/dv K and V of 64 + 2 x (Q, dO) tiles of 32 (the forward's: attention_forward_mma.cuh).
// head_dim 64: 36,864 / 37,632 bytes; head_dim 128: 69,632 / 70,400 bytes (68.75 KiB), under
// sm_80's 163 KiB per block with 2 blocks per SM (2 x (68.75 + 1 reserved) = 139.5 KiB of 164) and
// sm_90's 227 KiB with 3 (209.25 KiB of 228). Above 48 KiB they opt in.
template <int HD>
inline constexpr std::size_t kMmaDkvSmem =
    (2 * kMmaBlockRows + 2 * (2 * kMmaQueryTile)) * kMmaSmemStride<HD> * sizeof(bf16) +
    2 * (2 * kMmaQueryTile) * sizeof(float) + 2 * kMmaQueryTile * sizeof(int);
template <int HD>
inline constexpr std::size_t kMmaDqSmem =
    (2 * kMmaBlockRows + 2 * (2 * kMmaKeyTile)) * kMmaSmemStride<HD> * sizeof(bf16);
static_assert(kMmaDkvSmem<128> == 70400 && kMmaDqSmem<128> == 69632,
              "the shared-memory budget in the comment above");
static_assert(2 * (kMmaDkvSmem<128> + 1024) <= 164 * 1024,
              "2 blocks per SM on sm_80 at head_dim 128 (1 KiB reserved per block)");

// dq, dk, dv from D = rowsum(dO o O) (already in `D`, B * Hq * T floats); training shapes.
template <int HD>
void attention_backward_mma(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const float* lse,
                            const float* D, const bf16* q, const bf16* k, const bf16* v,
                            const std::int32_t* positions, std::int64_t B, std::int64_t T_,
                            std::int64_t Hq, std::int64_t Hkv, std::int64_t q_stride,
                            std::int64_t k_stride, std::int64_t v_stride, std::int64_t do_stride,
                            std::int64_t dq_stride, std::int64_t dk_stride, std::int64_t dv_stride,
                            cudaStream_t stream) {
  static_assert(HD % 16 == 0, "the tensor-core kernels take head_dim in 16-wide k-chunks");
  const int Ti = static_cast<int>(T_), Hqi = static_cast<int>(Hq), Hkvi = static_cast<int>(Hkv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  // The outputs too: `packed` also selects 16-byte stores of dq, dk, dv.
  const bool packed = rows_aligned16<bf16>(HD, {q, k, v, dout, dq, dk, dv}) &&
                      strides_aligned16<bf16>({q_stride, k_stride, v_stride, do_stride, dq_stride,
                                               dk_stride, dv_stride});

  auto dq_kernel = attention_backward_dq_mma_kernel<HD>;
  allow_dynamic_shared(dq_kernel, kMmaDqSmem<HD>);
  launch(dq_kernel,
         dim3(static_cast<unsigned>(ceil_div(T_, kMmaBlockRows)), static_cast<unsigned>(Hq),
              static_cast<unsigned>(B)),
         dim3(kAttentionThreads), kMmaDqSmem<HD>, stream, dq, dout, lse, D, q, k, v, positions, Ti,
         Ti, Hqi, Hkvi, q_stride, k_stride, v_stride, do_stride, dq_stride, scale, packed);

  auto dkv_kernel = attention_backward_dkv_mma_kernel<HD>;
  allow_dynamic_shared(dkv_kernel, kMmaDkvSmem<HD>);
  launch(dkv_kernel,
         dim3(static_cast<unsigned>(ceil_div(T_, kMmaBlockRows)), static_cast<unsigned>(Hkv),
              static_cast<unsigned>(B)),
         dim3(kAttentionThreads), kMmaDkvSmem<HD>, stream, dk, dv, dout, lse, D, q, k, v, positions,
         Ti, Ti, Hqi, Hkvi, q_stride, k_stride, v_stride, do_stride, dk_stride, dv_stride, scale,
         packed);
}

}  // namespace minitron::cuda
