// Tensor-core causal attention for bf16 (head_dim a multiple of 16): FlashAttention-2's forward
// on mma.sync m16n8k16 through kernels/mma.cuh, and the tile and fragment helpers its backward
// (kernels/attention_backward_mma.cuh) shares. kernels/attention.cuh holds the CUDA-core kernels
// (fp32 storage) and the public launchers, which dispatch to both for bf16.
//
// Layout as in attention.cuh: q [B*Tq, Hq*hd], k/v [B*Tk, Hkv*hd], lse fp32 [B, Hq, Tq] (natural
// log); query head h reads KV head h / (Hq / Hkv) in place.
//
// Common shape of the kernels: warps own 16-row m-tiles of the operand they accumulate for (the
// forward: 4 warps of 16 queries; the backward's shapes are in its file), so that their fp32
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
constexpr int kMmaKeyTile = 32;         // keys streamed per step (dq)
constexpr int kMmaForwardKeyTile = 64;  // keys streamed per step (forward)
constexpr int kMmaQueryTile = 32;       // queries streamed per step (dk/dv)
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
// on a 16-byte boundary (the launcher checked the base pointers with rows_aligned16; strides are
// multiples of HD), so one 16-byte load moves a pack; it is stored whole where shared rows are
// 16-byte aligned too (the tensor-core tiles), element by element otherwise.
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
  std::int64_t stride;
  int Tk, key_end;
  bool packed;

  // Issues the copies of the tile at keys k0 .. k0 + KT into buffer `slot` (none past key_end).
  __device__ __forceinline__ void load(int slot, int k0) const {
    if (k0 >= key_end) return;
    bf16* buffer = buffers + slot * kBuffer;
    mma_load_tile<HD>(buffer, k_head, stride, k0, KT, Tk, packed);
    mma_load_tile<HD>(buffer + KT * kMmaSmemStride<HD>, v_head, stride, k0, KT, Tk, packed);
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

// Forward: a warp owns 16 query rows, a block 64; keys stream through shared memory 64 at a
// time, double-buffered (cp.async: tile n + 1 loads while tile n is computed). Each warp loads its
// Q fragments once (ldmatrix, HD / 16 A fragments) and keeps them in registers over the whole key
// loop, so the Q tile borrows the second buffer until tile 1 arrives there;
// K fragments come by ldmatrix (K rows are the n index of Q K^T), V fragments by ldmatrix .trans.
// S = Q K^T and O += P V with fp32 accumulators; row statistics live in the 4 lanes of a quad
// (same g) and are combined with two shuffles. P is rounded to bf16 for the PV product (relative
// error <= 2^-8 per weight): each output moves by at most 2^-8 of max |v|.
// grid (ceil(Tq / 64), Hq, B), 128 threads.
template <int HD>
__global__ void attention_forward_mma_kernel(bf16* out, float* lse, const bf16* q, const bf16* k,
                                             const bf16* v, const std::int32_t* positions, int Tq,
                                             int Tk, int Hq, int Hkv, float scale_log2,
                                             bool packed) {
  constexpr int S = kMmaSmemStride<HD>;
  constexpr int KT = kMmaForwardKeyTile;
  constexpr int KC = HD / 16;  // k-chunks of the QK^T product
  constexpr int NB = KT / 8;   // 8-key blocks of a tile
  constexpr int OB = HD / 8;   // 8-dim blocks of the output
  static_assert(kMmaBlockRows <= 2 * KT, "the Q tile fits in buffer 1");
  // Two buffers of a K tile and a V tile ([KT][S] each), filled alternately: tile n + 1 loads
  // while tile n is computed. The Q tile [64][S] is first loaded into buffer 1's K rows (read
  // into registers before tile 1 arrives there).
  MINITRON_DYNAMIC_SHARED(bf16, kv_s);
  constexpr int kBuffer = MmaKvStream<HD, KT>::kBuffer;
  bf16* q_s = kv_s + kBuffer;

  // Query tiles in reverse: a causal tile's work grows with its index, so the heaviest blocks
  // start first and the light ones fill the tail (FlashAttention's order).
  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * kMmaBlockRows;
  const int hk = h / (Hq / Hkv), offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t q_stride = static_cast<std::int64_t>(Hq) * HD;
  const std::int64_t kv_stride = static_cast<std::int64_t>(Hkv) * HD;
  const bf16* q_head = q + static_cast<std::int64_t>(b) * Tq * q_stride + h * HD;
  const bf16* k_head = k + static_cast<std::int64_t>(b) * Tk * kv_stride + hk * HD;
  const bf16* v_head = v + static_cast<std::int64_t>(b) * Tk * kv_stride + hk * HD;

  const int row0 = q0 + warp * kMmaWarpRows;  // this warp's first query row
  const int last_query = (q0 + kMmaBlockRows < Tq ? q0 + kMmaBlockRows : Tq) - 1;
  const int key_end = last_query + offset + 1 < Tk ? last_query + offset + 1 : Tk;
  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;
  const int key_begin = attention_first_key_tile(row_positions, q0, KT);

  const MmaKvStream<HD, KT> stream{kv_s, k_head, v_head, kv_stride, Tk, key_end, packed};
  mma_load_tile<HD>(q_s, q_head, q_stride, q0, kMmaBlockRows, Tq, packed);
  cp_async_commit();
  stream.load(0, key_begin);
  cp_async_commit();
  cp_async_wait<1>();  // the Q group; tile 0 may still be in flight
  __syncthreads();
  mma::FragmentA qa[KC];
#pragma unroll
  for (int kc = 0; kc < KC; ++kc) qa[kc] = ldsm_a<S>(q_s + warp * kMmaWarpRows * S + kc * 16, lane);

  const int rows[2] = {row0 + g, row0 + g + 8};
  // Each row's document start (rows past the sequence take the last row's, so that row g + 8's
  // is never below row g's, which the mask test relies on), and the warp's smallest.
  const int first_key[2] = {attention_first_key(row_positions, rows[0] < Tq ? rows[0] : Tq - 1),
                            attention_first_key(row_positions, rows[1] < Tq ? rows[1] : Tq - 1)};
  const int warp_first_key = row0 < Tq ? attention_first_key(row_positions, row0) : 0;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  mma::Accumulator o[OB];
#pragma unroll
  for (int j = 0; j < OB; ++j) o[j] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};

  int n = 0;  // tiles so far: tile n is in buffer n % 2
  for (int k0 = key_begin; k0 < key_end; k0 += KT, ++n) {
    // Before tile 1 overwrites the Q rows in buffer 1, every warp holds its Q fragments (the
    // barrier that begins advance).
    const bf16* k_s = stream.advance(n, k0);
    const bf16* v_s = k_s + KT * S;
    // A warp whose rows all precede this tile, or whose documents all start after it, has
    // nothing to add (the whole warp skips).
    if (k0 > row0 + 15 + offset || k0 + KT <= warp_first_key) continue;

    mma::Accumulator s[NB];
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) s[nb] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
#pragma unroll
    for (int kc = 0; kc < KC; ++kc) {
#pragma unroll
      for (int np = 0; np < NB / 2; ++np) {
        mma::FragmentB b0, b1;
        ldsm_b_pair<S>(b0, b1, k_s + np * 16 * S + kc * 16, lane);
        mma::mma_m16n8k16_bf16(s[2 * np], qa[kc], b0, s[2 * np]);
        mma::mma_m16n8k16_bf16(s[2 * np + 1], qa[kc], b1, s[2 * np + 1]);
      }
    }

    // Mask (only where the tile reaches past the sequence, a row's diagonal or, before it, the
    // start of a row's document), then the online softmax for rows g (half 0) and g + 8 (half
    // 1). Row g + 8's document starts no earlier than row g's.
    const bool masked = k0 + KT > Tk || k0 + KT - 1 > row0 + offset || k0 < first_key[1];
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int key = k0 + nb * 8 + 2 * t + r % 2, half = r / 2;
        const bool visible =
            !masked || (key < Tk && key <= rows[half] + offset && key >= first_key[half]);
        s[nb].value[r] = visible ? s[nb].value[r] * scale_log2 : -INFINITY;
        tile_max[half] = fmaxf(tile_max[half], s[nb].value[r]);
      }
    }
    float alpha[2], m_safe[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      tile_max[half] = fmaxf(tile_max[half], __shfl_xor_sync(kFullMask, tile_max[half], 1));
      tile_max[half] = fmaxf(tile_max[half], __shfl_xor_sync(kFullMask, tile_max[half], 2));
      const float m_new = fmaxf(m[half], tile_max[half]);
      // A row sees no key of a tile before its document's: m_new stays -inf (and p, alpha, l and
      // o 0) until the tile with its first key; the guard keeps exp2f(-inf - -inf) from ever
      // producing a NaN.
      m_safe[half] = m_new == -INFINITY ? 0.0f : m_new;
      alpha[half] = exp2f(m[half] - m_safe[half]);
      m[half] = m_new;
      l[half] *= alpha[half];  // per-lane partial sums; the quad adds them at the end
    }
#pragma unroll
    for (int j = 0; j < OB; ++j) {
#pragma unroll
      for (int r = 0; r < 4; ++r) o[j].value[r] *= alpha[r / 2];
    }
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const float p = exp2f(s[nb].value[r] - m_safe[r / 2]);
        s[nb].value[r] = p;
        l[r / 2] += p;
      }
    }

    // O += P V: P's A fragment for keys 16c .. 16c+15 is S blocks 2c and 2c+1 as they are.
#pragma unroll
    for (int c = 0; c < KT / 16; ++c) {
      mma_accumulate_rows<HD>(o, accumulators_as_a(s[2 * c], s[2 * c + 1]), v_s + c * 16 * S, lane);
    }
  }

#pragma unroll
  for (int half = 0; half < 2; ++half) {
    l[half] += __shfl_xor_sync(kFullMask, l[half], 1);
    l[half] += __shfl_xor_sync(kFullMask, l[half], 2);
  }
  // The buffer of tile n - 2 (Q's, with one tile) is free: every warp passed the barrier that
  // began the last tile after reading it (n counts the tiles).
  bf16* stage = kv_s + n % 2 * kBuffer + warp * kMmaWarpRows * S;
  const float inv[2] = {1.0f / l[0], 1.0f / l[1]};
  store_warp_rows<HD>(out + static_cast<std::int64_t>(b) * Tq * q_stride + h * HD, q_stride, row0,
                      Tq, o, inv, stage, packed, lane);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = rows[half];
    if (row < Tq && t == 0)
      lse[(static_cast<std::int64_t>(b) * Hq + h) * Tq + row] = (m[half] + log2f(l[half])) * kLn2;
  }
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

// Shared-memory bytes of the forward (also printed by bench/gpu's register report): 2 x (K, V)
// tiles of 64 rows of S = head_dim + 8 bf16, double-buffered (Q borrows buffer 1). head_dim 64:
// 36,864 bytes; head_dim 128: 69,632 bytes (68 KiB), opting in above 48 KiB. The backward's are in
// kernels/attention_backward_mma.cuh.
template <int HD>
inline constexpr std::size_t kMmaForwardSmem = 2 * (2 * kMmaForwardKeyTile) * kMmaSmemStride<HD> *
                                               sizeof(bf16);
static_assert(kMmaForwardSmem<128> == 69632, "the shared-memory budget in the comment above");

template <int HD>
void attention_forward_mma(bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                           const std::int32_t* positions, std::int64_t B, std::int64_t Tq,
                           std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv,
                           cudaStream_t stream) {
  static_assert(HD % 16 == 0, "the tensor-core kernels take head_dim in 16-wide k-chunks");
  auto kernel = attention_forward_mma_kernel<HD>;
  allow_dynamic_shared(kernel, kMmaForwardSmem<HD>);
  const dim3 grid(static_cast<unsigned>(ceil_div(Tq, kMmaBlockRows)), static_cast<unsigned>(Hq),
                  static_cast<unsigned>(B));
  // The outputs too: `packed` also selects 16-byte stores of the output rows.
  const bool packed = rows_aligned16<bf16>(HD, {q, k, v, out});
  launch(kernel, grid, dim3(kAttentionThreads), kMmaForwardSmem<HD>, stream, out, lse, q, k, v,
         positions, static_cast<int>(Tq), static_cast<int>(Tk), static_cast<int>(Hq),
         static_cast<int>(Hkv), kLog2e / std::sqrt(static_cast<float>(HD)), packed);
}

}  // namespace minitron::cuda
