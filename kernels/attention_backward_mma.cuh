// Tensor-core causal attention backward for bf16 (head_dim a multiple of 16): FlashAttention-2's
// math on mma.sync m16n8k16 (kernels/mma.cuh) in two deterministic kernels, built on the tiles and
// fragment helpers of kernels/attention_mma.cuh (which the forward, attention_forward_mma.cuh,
// shares).
//
// Both kernels recompute P = exp2(S * scale_log2 - lse_log2) from the saved lse, dP = dO V^T and
// dS = P o (dP - D), D = rowsum(dO o O) (attention.cuh's dot kernel, run first, into the
// workspace); the softmax scale is applied once, to dQ and dK. Grouped KV heads are read in place
// (query head h reads KV head h / (Hq / Hkv)), and the dK, dV of a KV head sum over its query
// heads inside one block, in head order.
//
// Products per (query tile, key tile): FlashAttention-2 does 5 GEMM-sized ones (S, dP, dV, dK, dQ)
// in one pass over key blocks, adding dQ into fp32 with atomics, whose order (hence bits) changes
// from run to run. Here dK/dV and dQ are separate passes, each accumulating in registers in a fixed
// order, so every gradient is bit-identical across runs: the dK/dV pass does 4 (S^T, dP^T, dV, dK)
// and the dQ pass 3 (S, dP, dQ), 7 in all. The two extra are the price of determinism without an
// fp32 dQ partial per key block (ceil(T / 128) x T x head_dim floats a head: 2 GiB for 32 heads of
// 128 at T = 4096) or a dS written to memory (T^2 / 2 a head).
//
// Shape of both kernels: a warp owns kMt 16-row m-tiles (32 rows at kMt = 2) of the operand it
// accumulates for (keys for dK/dV, queries for dQ); the other operand streams through shared
// memory in tiles, double-buffered with cp.async (one commit group per tile). Each B fragment an
// ldmatrix brings from the streamed tile then feeds kMt mma (one per m-tile), and each fragment of
// the warp's own rows feeds every 8-column block of the tile: at kMt = 2 half the ldmatrix per mma
// of one m-tile. Where registers allow (dQ at head_dim <= 64), the warp's own Q and dO fragments
// are loaded once and held in registers across key tiles. Per tile the kernels compute S, its
// softmax P, (dK/dV: dV += P^T dO,) then dP and dS, so only one score product's fragments are
// live beside P.
//
// ldmatrix (x4) per mma.sync, per warp and streamed tile, counted from the loops below (A:
// fragments of the warp's own rows, B: of the streamed tile; KC = HD / 16 k-chunks, NB 8-row
// blocks of the tile):
//   each score product (S, then dP): A kMt (0 when held) + B NB / 2 per k-chunk, for kMt NB mma
//   each accumulation (dV, dK or dQ): HD / 16 B (.trans) per 16 tile rows, for kMt HD / 8 mma
//                          ldmatrix / mma per tile        old kernels (4 warps x 16 rows)
//   dK/dV 64  (2 x 16, 16-query tiles)  32 / 64 = 0.50    40 / 64 = 0.63 (32-query tiles)
//   dK/dV 128 (1 x 16, 32-query tiles)  80 / 128 = 0.63   80 / 128 = 0.63
//   dQ 64     (2 x 16, held, 32 keys)   24 / 96 = 0.25    32 / 48 = 0.67
//   dQ 128    (2 x 16, 32 keys)         80 / 192 = 0.42   64 / 96 = 0.67
// (dQ 64 loads its 16 held fragments once per block.)
// dK/dV at 128 keeps one m-tile a warp: two would need 256 accumulators a lane (dK and dV of 32
// keys x 128 dims); its block grows to 8 warps (128 keys) instead, which halves the Q and dO
// tiles each key is streamed against. At 64 the two m-tiles' scores and accumulators (64 + 128
// floats) leave no room for a 32-query tile's scores, hence 16-query tiles there.
//
// Register and shared-memory budget (nvcc 13 -O3, -Xptxas -v: no spill or stack on any target;
// shared bytes per block from kDkvSmem / kDqSmem below; blocks per SM from 64K registers and the
// shared memory, sm_80 164 KiB, sm_90/100 228 KiB, 1 KiB reserved per block):
//   kernel     warps x rows  registers sm_80/90/100/120  shared bytes  blocks (warps) per SM
//   dK/dV 64   4 x 32        238 / 242 / 255 / 240       46,464        2 (8) on sm_80 and sm_90
//   dK/dV 128  8 x 16        239 / 248 / 252 / 242       105,216       1 (8) on sm_80 and sm_90
//   dQ 64      4 x 32        242 / 240 / 250 / 248       56,832        2 (8) on sm_80 and sm_90
//   dQ 128     4 x 32        244 / 246 / 251 / 254       105,984       1 (4) on sm_80, 2 (8) sm_90
// (old: dK/dV 244 registers at 128 on sm_80, 70,400 bytes, 2 blocks of 4 warps.) dQ 128 on sm_80
// trades occupancy (4 warps a SM, each with two m-tiles of independent mma in flight) for half
// the ldmatrix per mma; bench/gpu times it against the old shape on a GPU.
//
// Rounding (beyond fp32 accumulation): P and dS are rounded to bf16 (relative error <= 2^-8
// each) before they multiply dO, Q or K, so |error dV_j| <= 2^-8 sum_i P_ij |dO_i|,
// |error dK_j| <= 2^-8 scale sum_i |dS_ij| |q_i| and |error dQ_i| <= 2^-8 scale sum_j |dS_ij| |k_j|
// (elementwise over dims), plus one bf16 rounding of each output.
//
// RoPE (rope_inv_freq): q and k arrive rotated (the forward left them so); each warp rotates its
// dQ or dK rows back in the shared rows that stage its stores (store_warp_rows), after rounding
// them to bf16 as the separate rope_backward pass would read them, so the gradients are
// bit-identical to attention's followed by RoPE's backward, with no pass of their own.
//
// Row strides: every tensor has its own row stride in elements (AttentionStrides, resolved by the
// launcher: Hq * HD for q, out, dout, dq and Hkv * HD for k, v, dk, dv when unfused), so q, k, v
// may be views into one fused QKV buffer and dq, dk, dv into one fused gradient buffer.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/row_strides.h"
#include "kernels/attention_mma.cuh"

namespace minitron::cuda {

// Tile shapes per head_dim (see the budget above): warps per block, 16-row m-tiles per warp,
// streamed tile rows, and whether the warp's own fragments stay in registers.
template <int HD>
struct AttentionDkvShape {
  static constexpr int kMt = HD <= 64 ? 2 : 1;  // 2 m-tiles need 4 HD accumulators a lane
  static constexpr int kWarps = HD <= 64 ? 4 : 8;
  static constexpr int kBlockKeys = kWarps * kMt * 16;  // 128
  static constexpr int kQueryTile = HD <= 64 ? 16 : 32;
};
template <int HD>
struct AttentionDqShape {
  static constexpr int kMt = 2;
  static constexpr int kWarps = 4;
  static constexpr int kBlockQueries = kWarps * kMt * 16;  // 128
  static constexpr int kKeyTile = 32;
  static constexpr bool kHold = HD <= 64;  // 2 x 2 x HD/16 fragments: 32 registers at 64
};

// The fragments of a warp's own MT m-tiles of two operands (Q and dO for dQ, K and V for dK/dV),
// rows at `a0` and `a1` (shared, stride S): read by ldmatrix at each use, or with HOLD loaded once
// into registers.
template <int HD, int MT, bool HOLD>
struct WarpRowFragments {
  static constexpr int S = kMmaSmemStride<HD>;
  static constexpr int KC = HD / 16;
  const bf16* a0;
  const bf16* a1;
  mma::FragmentA held[HOLD ? 2 : 1][HOLD ? MT : 1][HOLD ? KC : 1];

  __device__ __forceinline__ void load(int lane) {
    if constexpr (HOLD) {
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int kc = 0; kc < KC; ++kc) {
          held[0][m][kc] = ldsm_a<S>(a0 + m * 16 * S + kc * 16, lane);
          held[1][m][kc] = ldsm_a<S>(a1 + m * 16 * S + kc * 16, lane);
        }
      }
    }
  }
  // Operand `op` (0: a0, 1: a1), m-tile m, k-chunk kc.
  __device__ __forceinline__ mma::FragmentA get(int op, int m, int kc, int lane) const {
    if constexpr (HOLD) {
      return held[op][m][kc];
    } else {
      return ldsm_a<S>((op == 0 ? a0 : a1) + m * 16 * S + kc * 16, lane);
    }
  }
};

// One score product of a warp's MT m-tiles against a streamed tile of NB * 8 rows, over
// head_dim: acc = A B^T with A the warp's operand `op` (0: K or Q, 1: V or dO) and B the tile's
// rows (Q or dO for dK/dV, giving S^T or dP^T; K or V for dQ, giving S or dP). Each B fragment
// pair (one ldmatrix) feeds 2 MT mma. The kernels run S and its softmax before dP, so that only
// one product's A fragments and accumulators are live beside P (registers).
template <int HD, int MT, int NB, bool HOLD>
__device__ __forceinline__ void mma_scores(mma::Accumulator (&acc)[MT][NB],
                                           const WarpRowFragments<HD, MT, HOLD>& rows, int op,
                                           const bf16* b_tile, int lane) {
  constexpr int S = kMmaSmemStride<HD>;
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) acc[m][nb] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
  }
#pragma unroll
  for (int kc = 0; kc < HD / 16; ++kc) {
    mma::FragmentA fa[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) fa[m] = rows.get(op, m, kc, lane);
#pragma unroll
    for (int np = 0; np < NB / 2; ++np) {
      mma::FragmentB b0, b1;
      ldsm_b_pair<S>(b0, b1, b_tile + np * 16 * S + kc * 16, lane);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        mma::mma_m16n8k16_bf16(acc[m][2 * np], fa[m], b0, acc[m][2 * np]);
        mma::mma_m16n8k16_bf16(acc[m][2 * np + 1], fa[m], b1, acc[m][2 * np + 1]);
      }
    }
  }
}

// acc[m][0 .. HD/8) += A[m] B for one 16-deep k-chunk and each m-tile, B being 16 rows of a
// k-major shared tile (row k holds B[k][0 .. HD)): dV += P^T dO, dK += dS^T Q, dQ += dS K. Each
// B fragment pair (one ldmatrix .trans) feeds 2 MT mma.
template <int HD, int MT>
__device__ __forceinline__ void mma_accumulate_rows_mt(mma::Accumulator (&acc)[MT][HD / 8],
                                                       const mma::FragmentA (&a)[MT],
                                                       const bf16* b_rows, int lane) {
  constexpr int S = kMmaSmemStride<HD>;
#pragma unroll
  for (int jp = 0; jp < HD / 16; ++jp) {
    mma::FragmentB b0, b1;
    ldsm_b_pair_trans<S>(b0, b1, b_rows + jp * 16, lane);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      mma::mma_m16n8k16_bf16(acc[m][2 * jp], a[m], b0, acc[m][2 * jp]);
      mma::mma_m16n8k16_bf16(acc[m][2 * jp + 1], a[m], b1, acc[m][2 * jp + 1]);
    }
  }
}

// dK/dV: a warp owns kMt x 16 keys of one KV head (a block kBlockKeys = 128) and keeps their dK
// and dV in registers (kMt HD / 2 floats each per lane) over one pass: every query head of the
// group in order, and for each its 32-query tiles from the first that sees the block's first key,
// which stream (double-buffered) through shared memory with their lse and D:
//   S^T = K Q^T, P^T = exp2(S^T * scale_log2 - lse_log2), dV += P^T dO,
//   dP^T = V dO^T, dS^T = P^T o (dP^T - D), dK += dS^T Q.
// K and V are loaded into shared memory once per block; their fragments are read there by
// ldmatrix (holding them too would not fit beside the accumulators). grid (ceil(Tk / 128), Hkv, B).
template <int HD>
__global__ void attention_backward_dkv_mma_kernel(
    bf16* dk, bf16* dv, const bf16* dout, const float* lse, const float* D, const bf16* q,
    const bf16* k, const bf16* v, const std::int32_t* positions, int Tq, int Tk, int Hq, int Hkv,
    float scale, AttentionStrides strides, const float* rope_inv_freq, bool packed) {
  using Shape = AttentionDkvShape<HD>;
  constexpr int S = kMmaSmemStride<HD>;
  constexpr int MT = Shape::kMt;
  constexpr int QT = Shape::kQueryTile;
  constexpr int BK = Shape::kBlockKeys;
  constexpr int NB = QT / 8;           // 8-query blocks of a tile
  constexpr int OB = HD / 8;           // 8-dim blocks of dK and dV
  MINITRON_DYNAMIC_SHARED(bf16, k_s);  // [BK][S]
  bf16* v_s = k_s + BK * S;            // [BK][S]
  // Two buffers of a Q tile and a dO tile ([QT][S] each), filled alternately: query tile n + 1
  // loads while tile n is computed; their lse (log2 units) and D ([QT] floats each) likewise,
  // and their document starts ([QT] ints).
  bf16* qdo_s = v_s + BK * S;
  constexpr int kBuffer = 2 * QT * S;  // elements of one buffer (Q then dO)
  float* stats_s = reinterpret_cast<float*>(qdo_s + 2 * kBuffer);  // [2][lse QT, D QT]
  int* first_s = reinterpret_cast<int*>(stats_s + 2 * 2 * QT);     // [2][QT]

  // Key blocks in order: key block j is seen by every query from j on, so the early (low
  // blockIdx.x) blocks are the heavy ones and already start first.
  const int b = blockIdx.z, hk = blockIdx.y, j0 = blockIdx.x * BK;
  const int group = Hq / Hkv, offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t k_offset = static_cast<std::int64_t>(b) * Tk * strides.k + hk * HD;
  const std::int64_t v_offset = static_cast<std::int64_t>(b) * Tk * strides.v + hk * HD;
  const float scale_log2 = scale * kLog2e;

  const int first_query = j0 - offset > 0 ? j0 - offset : 0;  // the first that sees key j0
  const int tile_begin = first_query / QT * QT;
  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;
  // Packed documents: the query tiles after the block's last key's document see none of them.
  const int last_key = (j0 + BK < Tk ? j0 + BK : Tk) - 1;
  const int query_end = attention_query_end(row_positions, tile_begin, Tq, QT, last_key);
  // Query tile (h, q0) into buffer `p`: Q and dO by cp.async (the caller commits), lse and D by
  // plain loads, which the same barrier after the wait publishes.
  auto load_query_tile = [&](int p, int h, int q0) {
    bf16* buffer = qdo_s + p * kBuffer;
    mma_load_tile<HD>(buffer, q + static_cast<std::int64_t>(b) * Tq * strides.q + h * HD, strides.q,
                      q0, QT, Tq, packed);
    mma_load_tile<HD>(buffer + QT * S,
                      dout + static_cast<std::int64_t>(b) * Tq * strides.dout + h * HD,
                      strides.dout, q0, QT, Tq, packed);
    if (static_cast<int>(threadIdx.x) < QT) {
      const std::int64_t stat0 = (static_cast<std::int64_t>(b) * Hq + h) * Tq;
      const int i = static_cast<int>(threadIdx.x), query = q0 + i;
      stats_s[p * 2 * QT + i] = query < Tq ? lse[stat0 + query] * kLog2e : 0.0f;
      stats_s[p * 2 * QT + QT + i] = query < Tq ? D[stat0 + query] : 0.0f;
      first_s[p * QT + i] = query < Tq ? attention_first_key(row_positions, query) : 0;
    }
  };
  // One group: K, V and the first query tile (first_query < Tq, so every block has one).
  mma_load_tile<HD>(k_s, k + k_offset, strides.k, j0, BK, Tk, packed);
  mma_load_tile<HD>(v_s, v + v_offset, strides.v, j0, BK, Tk, packed);
  load_query_tile(0, hk * group, tile_begin);
  cp_async_commit();

  mma::Accumulator dk_acc[MT][OB], dv_acc[MT][OB];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int j = 0; j < OB; ++j) {
      dk_acc[m][j] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
      dv_acc[m][j] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
    }
  }

  const int key0 = j0 + warp * MT * 16;  // this warp's first key
  const WarpRowFragments<HD, MT, false> kv_rows{k_s + (key0 - j0) * S, v_s + (key0 - j0) * S, {}};

  int n = 0;  // query tiles so far, over all heads of the group: tile n is in buffer n % 2
  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    for (int q0 = tile_begin; q0 < query_end; q0 += QT, ++n) {
      // The block is done with tile n - 1's buffer, the next tile (of this head, or the next
      // head's first) goes in flight (an empty group after the last keeps one group per tile),
      // tile n is waited for.
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
      if (key0 >= Tk || key0 > q0 + QT - 1 + offset || key0 + MT * 16 - 1 < tile_first[0]) continue;

      // S^T, then P^T in place: value r of m-tile m is (key 16m + g + 8 (r / 2), query
      // 8 nb + 2t + r % 2).
      mma::Accumulator s[MT][NB], dp[MT][NB];
      mma_scores<HD, MT, NB, false>(s, kv_rows, 0, q_s, lane);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int i = nb * 8 + 2 * t + r % 2, query = q0 + i;
            const int key = key0 + m * 16 + g + 8 * (r / 2);
            const bool visible =
                query < Tq && key < Tk && key <= query + offset && key >= tile_first[i];
            s[m][nb].value[r] = visible ? exp2f(s[m][nb].value[r] * scale_log2 - lse_s[i]) : 0.0f;
          }
        }
      }
      // dV += P^T dO over the tile's queries, 16 at a time.
#pragma unroll
      for (int c = 0; c < QT / 16; ++c) {
        mma::FragmentA pa[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m) pa[m] = accumulators_as_a(s[m][2 * c], s[m][2 * c + 1]);
        mma_accumulate_rows_mt<HD, MT>(dv_acc, pa, do_s + c * 16 * S, lane);
      }
      // dP^T, then dS^T in place.
      mma_scores<HD, MT, NB, false>(dp, kv_rows, 1, do_s, lane);
#pragma unroll
      for (int m = 0; m < MT; ++m) {
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int i = nb * 8 + 2 * t + r % 2;
            dp[m][nb].value[r] = s[m][nb].value[r] * (dp[m][nb].value[r] - d_s[i]);
          }
        }
      }

      // dK += dS^T Q.
#pragma unroll
      for (int c = 0; c < QT / 16; ++c) {
        mma::FragmentA dsa[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m) dsa[m] = accumulators_as_a(dp[m][2 * c], dp[m][2 * c + 1]);
        mma_accumulate_rows_mt<HD, MT>(dk_acc, dsa, q_s + c * 16 * S, lane);
      }
    }
  }

  // The warp's own K and V rows (no other warp reads them) stage dK and dV. With RoPE, dK goes
  // back through the rotation there (the gradient of the unrotated keys); the positions' row is
  // recomputed from the parameter, as keeping row_positions live across the loop spills (dQ 64
  // on sm_100).
  const float dk_scale[2] = {scale, scale}, dv_scale[2] = {1.0f, 1.0f};
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int row0 = key0 + m * 16;
    store_warp_rows<HD>(dk + static_cast<std::int64_t>(b) * Tk * strides.dk + hk * HD, strides.dk,
                        row0, Tk, dk_acc[m], dk_scale, k_s + (row0 - j0) * S, packed, lane,
                        rope_inv_freq,
                        positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr);
    store_warp_rows<HD>(dv + static_cast<std::int64_t>(b) * Tk * strides.dv + hk * HD, strides.dv,
                        row0, Tk, dv_acc[m], dv_scale, v_s + (row0 - j0) * S, packed, lane);
  }
}

// dQ: a warp owns kMt x 16 query rows (a block kBlockQueries = 128) and keeps their dQ in
// registers; keys stream through shared memory 32 at a time (double-buffered): S = Q K^T, P,
// dP = dO V^T, dS = P o (dP - D), dQ += dS K. With kHold the warp's Q and dO fragments are read
// from shared memory once, before the key loop. grid (ceil(Tq / 128), Hq, B).
template <int HD>
__global__ void attention_backward_dq_mma_kernel(bf16* dq, const bf16* dout, const float* lse,
                                                 const float* D, const bf16* q, const bf16* k,
                                                 const bf16* v, const std::int32_t* positions,
                                                 int Tq, int Tk, int Hq, int Hkv, float scale,
                                                 AttentionStrides strides,
                                                 const float* rope_inv_freq, bool packed) {
  using Shape = AttentionDqShape<HD>;
  constexpr int S = kMmaSmemStride<HD>;
  constexpr int MT = Shape::kMt;
  constexpr int KT = Shape::kKeyTile;
  constexpr int BQ = Shape::kBlockQueries;
  constexpr int NB = KT / 8;
  constexpr int OB = HD / 8;
  MINITRON_DYNAMIC_SHARED(bf16, q_s);  // [BQ][S]
  bf16* do_s = q_s + BQ * S;           // [BQ][S]
  // Two buffers of a K tile and a V tile ([KT][S] each), filled alternately: tile n + 1 loads
  // while tile n is computed.
  bf16* kv_s = do_s + BQ * S;
  float* stats_s = reinterpret_cast<float*>(kv_s + 2 * 2 * KT * S);  // [lse BQ, D BQ]
  int* first_s = reinterpret_cast<int*>(stats_s + 2 * BQ);           // [BQ]

  // Query blocks in reverse, heaviest first, as in the forward.
  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * BQ;
  const int hk = h / (Hq / Hkv), offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t q_offset = static_cast<std::int64_t>(b) * Tq * strides.q + h * HD;
  const std::int64_t do_offset = static_cast<std::int64_t>(b) * Tq * strides.dout + h * HD;
  const bf16* k_head = k + static_cast<std::int64_t>(b) * Tk * strides.k + hk * HD;
  const bf16* v_head = v + static_cast<std::int64_t>(b) * Tk * strides.v + hk * HD;
  const std::int64_t stat0 = (static_cast<std::int64_t>(b) * Hq + h) * Tq;
  const float scale_log2 = scale * kLog2e;

  const int last_query = (q0 + BQ < Tq ? q0 + BQ : Tq) - 1;
  const int key_end = last_query + offset + 1 < Tk ? last_query + offset + 1 : Tk;
  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;
  const int key_begin = attention_first_key_tile(row_positions, q0, KT);
  // One group: Q, dO and tile 0 into buffer 0. K and V share one stride argument in the stream,
  // so each is loaded by its own stream over the same buffers (V rows KT after K rows).
  mma_load_tile<HD>(q_s, q + q_offset, strides.q, q0, BQ, Tq, packed);
  mma_load_tile<HD>(do_s, dout + do_offset, strides.dout, q0, BQ, Tq, packed);
  auto load_keys = [&](int slot, int k0) {
    if (k0 >= key_end) return;
    bf16* buffer = kv_s + slot * 2 * KT * S;
    mma_load_tile<HD>(buffer, k_head, strides.k, k0, KT, Tk, packed);
    mma_load_tile<HD>(buffer + KT * S, v_head, strides.v, k0, KT, Tk, packed);
  };
  load_keys(0, key_begin);
  cp_async_commit();

  const int row0 = q0 + warp * MT * 16;  // this warp's first query
  // The block's rows' lse (log2 units), D and document starts, in shared memory rather than
  // registers (head_dim 128 needs those 12); the loop's first barrier publishes them.
  for (int i = static_cast<int>(threadIdx.x); i < BQ; i += static_cast<int>(blockDim.x)) {
    const int row = q0 + i;
    stats_s[i] = row < Tq ? lse[stat0 + row] * kLog2e : 0.0f;
    stats_s[BQ + i] = row < Tq ? D[stat0 + row] : 0.0f;
    first_s[i] = row < Tq ? attention_first_key(row_positions, row) : 0;
  }
  const int warp_first_key = row0 < Tq ? attention_first_key(row_positions, row0) : 0;
  mma::Accumulator dq_acc[MT][OB];
#pragma unroll
  for (int m = 0; m < MT; ++m) {
#pragma unroll
    for (int j = 0; j < OB; ++j) dq_acc[m][j] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
  }

  WarpRowFragments<HD, MT, Shape::kHold> qdo_rows{
      q_s + (row0 - q0) * S, do_s + (row0 - q0) * S, {}};
  bool held = false;  // the Q and dO fragments are loaded once tile 0's group has arrived

  for (int k0 = key_begin, n = 0; k0 < key_end; k0 += KT, ++n) {
    // The block is done with tile n - 1, whose buffer tile n + 1 now goes into; tile n (and,
    // with tile 0, Q and dO) is waited for. One group per tile (an empty one after the last).
    __syncthreads();
    load_keys((n + 1) % 2, k0 + KT);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* k_s = kv_s + n % 2 * 2 * KT * S;
    const bf16* v_s = k_s + KT * S;
    // Rows past the sequence, all before this tile's first key, or all in documents that start
    // after its last: nothing visible (whole warp).
    if (row0 >= Tq || k0 > row0 + MT * 16 - 1 + offset || k0 + KT <= warp_first_key) continue;
    if (!held) {
      qdo_rows.load(lane);
      held = true;
    }

    // S, then P in place: value r of m-tile m is (row 16m + g + 8 (r / 2), key 8 nb + 2t + r % 2).
    mma::Accumulator s[MT][NB], dp[MT][NB];
    mma_scores<HD, MT, NB, Shape::kHold>(s, qdo_rows, 0, k_s, lane);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int key = k0 + nb * 8 + 2 * t + r % 2, half = r / 2;
          const int row = row0 + m * 16 + g + 8 * half;
          const bool visible =
              row < Tq && key < Tk && key <= row + offset && key >= first_s[row - q0];
          s[m][nb].value[r] =
              visible ? exp2f(s[m][nb].value[r] * scale_log2 - stats_s[row - q0]) : 0.0f;
        }
      }
    }
    // dP, then dS in place.
    mma_scores<HD, MT, NB, Shape::kHold>(dp, qdo_rows, 1, v_s, lane);
#pragma unroll
    for (int m = 0; m < MT; ++m) {
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int i = row0 - q0 + m * 16 + g + 8 * (r / 2);
          dp[m][nb].value[r] = s[m][nb].value[r] * (dp[m][nb].value[r] - stats_s[BQ + i]);
        }
      }
    }

    // dQ += dS K over the tile's keys, 16 at a time.
#pragma unroll
    for (int c = 0; c < KT / 16; ++c) {
      mma::FragmentA dsa[MT];
#pragma unroll
      for (int m = 0; m < MT; ++m) dsa[m] = accumulators_as_a(dp[m][2 * c], dp[m][2 * c + 1]);
      mma_accumulate_rows_mt<HD, MT>(dq_acc, dsa, k_s + c * 16 * S, lane);
    }
  }

  // The warp's own Q rows (no other warp reads them) stage dQ. With RoPE, dQ goes back through
  // the rotation there (the gradient of the unrotated queries; positions as in dK/dV's).
  const float dq_scale[2] = {scale, scale};
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const int rows0 = row0 + m * 16;
    store_warp_rows<HD>(dq + static_cast<std::int64_t>(b) * Tq * strides.dq + h * HD, strides.dq,
                        rows0, Tq, dq_acc[m], dq_scale, q_s + (rows0 - q0) * S, packed, lane,
                        rope_inv_freq,
                        positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr);
  }
}

// Shared-memory bytes of each kernel (also printed by bench/gpu's register report): dK/dV holds
// the block's K and V (128 rows each) and two buffers of a 32-row Q and dO tile, plus 768 bytes of
// lse, D and document starts; dQ holds the block's Q and dO (128 rows each) and two buffers of a
// 32-row K and V tile. Rows are S = head_dim + 8 bf16.
template <int HD>
inline constexpr std::size_t kDkvSmem = (2 * AttentionDkvShape<HD>::kBlockKeys +
                                         2 * 2 * AttentionDkvShape<HD>::kQueryTile) *
                                            kMmaSmemStride<HD> * sizeof(bf16) +
                                        2 * 2 * AttentionDkvShape<HD>::kQueryTile * sizeof(float) +
                                        2 * AttentionDkvShape<HD>::kQueryTile * sizeof(int);
template <int HD>
inline constexpr std::size_t kDqSmem =
    (2 * AttentionDqShape<HD>::kBlockQueries + 2 * 2 * AttentionDqShape<HD>::kKeyTile) *
        kMmaSmemStride<HD> * sizeof(bf16) +
    AttentionDqShape<HD>::kBlockQueries*(2 * sizeof(float) + sizeof(int));
static_assert(kDkvSmem<64> == 46080 + 384 && kDkvSmem<128> == 104448 + 768 &&
                  kDqSmem<64> == 55296 + 1536 && kDqSmem<128> == 104448 + 1536,
              "the shared-memory budget in the header");

// dq, dk, dv from D = rowsum(dO o O) (already in `D`, B * Hq * T floats); training shapes.
template <int HD>
void attention_backward_mma(bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const float* lse,
                            const float* D, const bf16* q, const bf16* k, const bf16* v,
                            const std::int32_t* positions, std::int64_t B, std::int64_t T_,
                            std::int64_t Hq, std::int64_t Hkv, const AttentionStrides& strides,
                            cudaStream_t stream, const float* rope_inv_freq = nullptr) {
  static_assert(HD % 16 == 0, "the tensor-core kernels take head_dim in 16-wide k-chunks");
  const int Ti = static_cast<int>(T_), Hqi = static_cast<int>(Hq), Hkvi = static_cast<int>(Hkv);
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  // The outputs too: `packed` also selects 16-byte stores of dq, dk, dv. Every row starts on a
  // 16-byte boundary when the bases do and every stride is whole 16-byte packs.
  constexpr std::int64_t kPack = Packed128<bf16>::kSize;
  const bool packed = rows_aligned16<bf16>(HD, {q, k, v, dout, dq, dk, dv}) &&
                      strides.q % kPack == 0 && strides.k % kPack == 0 && strides.v % kPack == 0 &&
                      strides.dout % kPack == 0 && strides.dq % kPack == 0 &&
                      strides.dk % kPack == 0 && strides.dv % kPack == 0;

  auto dq_kernel = attention_backward_dq_mma_kernel<HD>;
  allow_dynamic_shared(dq_kernel, kDqSmem<HD>);
  launch(dq_kernel,
         dim3(static_cast<unsigned>(ceil_div(T_, AttentionDqShape<HD>::kBlockQueries)),
              static_cast<unsigned>(Hq), static_cast<unsigned>(B)),
         dim3(AttentionDqShape<HD>::kWarps * kWarpSize), kDqSmem<HD>, stream, dq, dout, lse, D, q,
         k, v, positions, Ti, Ti, Hqi, Hkvi, scale, strides, rope_inv_freq, packed);

  auto dkv_kernel = attention_backward_dkv_mma_kernel<HD>;
  allow_dynamic_shared(dkv_kernel, kDkvSmem<HD>);
  launch(dkv_kernel,
         dim3(static_cast<unsigned>(ceil_div(T_, AttentionDkvShape<HD>::kBlockKeys)),
              static_cast<unsigned>(Hkv), static_cast<unsigned>(B)),
         dim3(AttentionDkvShape<HD>::kWarps * kWarpSize), kDkvSmem<HD>, stream, dk, dv, dout, lse,
         D, q, k, v, positions, Ti, Ti, Hqi, Hkvi, scale, strides, rope_inv_freq, packed);
}

}  // namespace minitron::cuda
