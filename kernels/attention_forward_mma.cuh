// Tensor-core causal attention forward for bf16, FlashAttention-2 class (mma.sync m16n8k16 through
// kernels/mma.cuh, sm_80+). The shared tile helpers (mma_load_tile, the ldmatrix fragments, the
// row stores) are kernels/attention_mma.cuh's; the public launcher attention_forward of
// kernels/attention.cuh dispatches here for bf16.
//
// Layout as in attention.cuh, with the row strides passed in (elements): q rows q_stride apart,
// k rows k_stride, v rows v_stride, out rows out_stride (today Hq*hd and Hkv*hd; larger when Q, K
// and V are views into one fused QKV buffer), lse fp32 [B, Hq, Tq] (natural log). Query head h
// reads KV head h / (Hq / Hkv) in place; query t sees keys t + Tk - Tq back to its document's
// start (packed `positions`, Tq == Tk) or to 0.
//
// Shape: a block of 4 warps owns 128 query rows, a warp 32 of them as two 16-row slices (rows
// row0 .. row0 + 15 and row0 + 16 .. row0 + 31), so each B fragment a K or V ldmatrix.x4 brings
// (two 8-column blocks) feeds 2 slices x 2 blocks = 4 mma, twice the 16-row warp's. K and V stream
// through shared memory in KT-key tiles, double-buffered (cp.async: tile n + 1 loads while tile n
// is computed). O and the running max and sum stay in registers for the whole key loop; P goes
// from the S accumulators to the PV product's A fragments without shared memory.
//
// Q fragments, and the key tile, per head_dim (the register budget decides):
//  - head_dim <= 64: Q in registers (2 slices x HD/16 A fragments, 32 registers at 64), loaded
//    once by ldmatrix; 64-key tiles. O (64) + S (64) + Q (32) = 160 fp32/b32 values a lane.
//  - head_dim 96, 128: Q stays in shared memory and is re-read (one ldmatrix.x4 per slice and
//    16-deep k-chunk, feeding KT / 8 = 4 mma) each tile; 32-key tiles. In registers at 128, O
//    alone is 128 values a lane and Q would be 64 more: with S that is 256 before any address,
//    past the 255-register limit, so Q in registers would spill. 32-key tiles keep S at 32 values
//    and the shared tile at 68 KiB, so two blocks fit an sm_80 SM.
//
// Budget (registers/thread from nvcc 13 -Xptxas -v, 2026-12-06: no spills and no stack on any
// target; shared bytes/block from kForwardMmaSmem; blocks/SM the lower of the shared-memory bound,
// 1 KiB reserved per block, and the register bound, 64 Ki registers per SM at 128 threads a block):
//
//   head_dim  Q in     KT  registers sm_80/90/100/120  shared bytes  blocks/SM sm_80, sm_90
//   64        regs     64  223 / 232 / 244 / 250       36,864        2 (registers), 2
//   128       shared   32  233 / 233 / 254 / 255       69,632        2 (both), 2 (registers)
//
// Registers are the bound (2 blocks, 8 warps an SM, as FlashAttention-2's 255-register head_dim
// 128 kernel). They are close to the limit: the mask runs as its own pass over masked tiles only
// (folded into the softmax loop it cost 30 registers and spilled at head_dim 128), and with Q in
// shared memory the k-chunk loop is unrolled by 2 (fully unrolled, sm_120 spilled).
//
// RoPE (rope_inv_freq): once Q's tile has landed, the block rotates it in shared memory (the rope
// kernel's arithmetic, kernels/rope.cuh) and each thread writes the pair it rotated back to q,
// which no other block reads for this head; K arrives rotated (the launcher's pass over K).
//
// Rounding: P is rounded to bf16 for the PV product (relative error <= 2^-8 per weight), so each
// output moves by at most 2^-8 of max |v|; O is rounded to bf16 once.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/row_strides.h"
#include "kernels/attention_mma.cuh"

namespace minitron::cuda {

// The forward's tiling for one head_dim (see the file comment for why these choices).
template <int HD>
struct ForwardMmaShape {
  static constexpr int kSlices = 2;                                             // per warp
  static constexpr int kWarpRows = kSlices * kMmaWarpRows;                      // 32
  static constexpr int kBlockRows = kAttentionThreads / kWarpSize * kWarpRows;  // 128
  static constexpr bool kQInRegisters = HD <= 64;
  static constexpr int kKeyTile = kQInRegisters ? 64 : 32;
  // Q in registers borrows K/V buffer 1 for its load (it is read into registers before tile 1
  // arrives there); otherwise the Q tile has its own rows after the two buffers.
  static constexpr int kQRows = kQInRegisters ? 0 : kBlockRows;
  static_assert(!kQInRegisters || kBlockRows <= 2 * kKeyTile, "the Q tile fits in buffer 1");
};

template <int HD>
inline constexpr std::size_t kForwardMmaSmem =
    (2 * (2 * ForwardMmaShape<HD>::kKeyTile) + ForwardMmaShape<HD>::kQRows) * kMmaSmemStride<HD> *
    sizeof(bf16);
static_assert(kForwardMmaSmem<64> == 36864 && kForwardMmaSmem<128> == 69632,
              "the shared-memory budget in the file comment");
static_assert(2 * (kForwardMmaSmem<128> + 1024) <= 164 * 1024,
              "2 blocks per SM on sm_80 at head_dim 128 (1 KiB reserved per block)");

// The four row strides the forward reads (of AttentionStrides' eight): its parameter block stays
// as small as it was when head_dim 128 was fitted to 255 registers without spilling on sm_120.
struct ForwardStrides {
  std::int64_t q, k, v, out;
};

// grid (ceil(Tq / 128), Hq, B), 128 threads; dynamic shared memory kForwardMmaSmem<HD>.
// scale_log2 = log2(e) / sqrt(HD). `packed`: every row of q, k, v and out starts on a 16-byte
// boundary (cp.async tiles and 16-byte output stores); otherwise element-wise copies.
template <int HD>
__global__ void attention_forward_mma_kernel(bf16* out, float* lse, bf16* q, const bf16* k,
                                             const bf16* v, const std::int32_t* positions, int Tq,
                                             int Tk, int Hq, int Hkv, ForwardStrides strides,
                                             const float* rope_inv_freq, float scale_log2,
                                             bool packed) {
  using Shape = ForwardMmaShape<HD>;
  constexpr int S = kMmaSmemStride<HD>;
  constexpr int KT = Shape::kKeyTile;
  constexpr int SL = Shape::kSlices;
  constexpr int KC = HD / 16;  // k-chunks of the QK^T product
  constexpr int NB = KT / 8;   // 8-key blocks of a tile
  constexpr int OB = HD / 8;   // 8-dim blocks of the output
  constexpr int BR = Shape::kBlockRows;
  // Two buffers of a K tile and a V tile ([KT][S] each), filled alternately; then, with Q in
  // shared memory, the Q tile [128][S].
  MINITRON_DYNAMIC_SHARED(bf16, kv_s);
  constexpr int kBuffer = 2 * KT * S;  // elements of one buffer
  bf16* q_s = Shape::kQInRegisters ? kv_s + kBuffer : kv_s + 2 * kBuffer;

  // Query blocks in reverse: a causal block's work grows with its index, so the heaviest blocks
  // start first and the light ones fill the tail (FlashAttention's order).
  const int b = blockIdx.z, h = blockIdx.y;
  const int q0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * BR;
  const int hk = h / (Hq / Hkv), offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int g = lane / 4, t = lane % 4;
  bf16* q_head = q + static_cast<std::int64_t>(b) * Tq * strides.q + h * HD;
  const bf16* k_head = k + static_cast<std::int64_t>(b) * Tk * strides.k + hk * HD;
  const bf16* v_head = v + static_cast<std::int64_t>(b) * Tk * strides.v + hk * HD;

  const int row0 = q0 + warp * Shape::kWarpRows;  // this warp's first query row
  const int last_query = (q0 + BR < Tq ? q0 + BR : Tq) - 1;
  const int key_end = last_query + offset + 1 < Tk ? last_query + offset + 1 : Tk;
  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;
  const int key_begin = attention_first_key_tile(row_positions, q0, KT);

  // The K/V tile at keys k0 .. k0 + KT into buffer `slot` (none past key_end): K's rows, then
  // V's, each with its own row stride.
  auto load_tile = [&](int slot, int k0) {
    if (k0 >= key_end) return;
    bf16* buffer = kv_s + slot * kBuffer;
    mma_load_tile<HD>(buffer, k_head, strides.k, k0, KT, Tk, packed);
    mma_load_tile<HD>(buffer + KT * S, v_head, strides.v, k0, KT, Tk, packed);
  };
  mma_load_tile<HD>(q_s, q_head, strides.q, q0, BR, Tq, packed);
  cp_async_commit();
  load_tile(0, key_begin);
  cp_async_commit();

  // RoPE: the block rotates its Q rows once, in shared memory, and writes them back rotated,
  // as the backward reads them (no other block reads these rows of this head). The barrier
  // that publishes the rotated tile is the next one: before Q's fragments are read into
  // registers, or the key loop's first (Q in shared memory).
  if (rope_inv_freq) {
    cp_async_wait<1>();  // the Q group; tile 0 may still be in flight
    __syncthreads();
    mma_rope_tile<HD>(q_s, q_head, strides.q, q0, BR, Tq, rope_inv_freq, row_positions);
  }

  // The warp's slices of Q: in registers (read once, before tile 1 overwrites buffer 1) or at
  // q_warp in shared memory (re-read each tile).
  const bf16* q_warp = q_s + warp * Shape::kWarpRows * S;
  mma::FragmentA qa[Shape::kQInRegisters ? SL : 1][Shape::kQInRegisters ? KC : 1];
  if constexpr (Shape::kQInRegisters) {
    cp_async_wait<1>();  // the Q group; tile 0 may still be in flight
    __syncthreads();
#pragma unroll
    for (int sl = 0; sl < SL; ++sl) {
#pragma unroll
      for (int kc = 0; kc < KC; ++kc)
        qa[sl][kc] = ldsm_a<S>(q_warp + sl * kMmaWarpRows * S + kc * 16, lane);
    }
  }

  // rows[sl][half]: the lane's query rows g (half 0) and g + 8 (half 1) of slice sl.
  int rows[SL][2], first_key[SL][2];
#pragma unroll
  for (int sl = 0; sl < SL; ++sl) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      rows[sl][half] = row0 + sl * kMmaWarpRows + g + 8 * half;
      // Each row's document start; rows past the sequence take the last row's, so that the
      // starts never decrease along the lane's rows (the mask test below relies on it).
      first_key[sl][half] =
          attention_first_key(row_positions, rows[sl][half] < Tq ? rows[sl][half] : Tq - 1);
    }
  }
  const int warp_first_key = row0 < Tq ? attention_first_key(row_positions, row0) : 0;
  float m[SL][2], l[SL][2];
  mma::Accumulator o[SL][OB];
#pragma unroll
  for (int sl = 0; sl < SL; ++sl) {
    m[sl][0] = m[sl][1] = -INFINITY;
    l[sl][0] = l[sl][1] = 0.0f;
#pragma unroll
    for (int j = 0; j < OB; ++j) o[sl][j] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
  }

  int n = 0;  // tiles so far: tile n is in buffer n % 2
  for (int k0 = key_begin; k0 < key_end; k0 += KT, ++n) {
    // The block is done with tile n - 1, whose buffer tile n + 1 now goes into (an empty group
    // after the last keeps one group per tile, so wait_group 1 always means tile n).
    __syncthreads();
    load_tile((n + 1) % 2, k0 + KT);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const bf16* k_s = kv_s + n % 2 * kBuffer;
    const bf16* v_s = k_s + KT * S;
    // A warp whose rows are past the sequence or all precede this tile, or whose documents all
    // start after it, has nothing to add (the whole warp skips).
    if (row0 >= Tq || k0 > row0 + Shape::kWarpRows - 1 + offset || k0 + KT <= warp_first_key)
      continue;

    // S = Q K^T: each K ldmatrix.x4 (two 8-key blocks of one k-chunk) feeds both slices.
    mma::Accumulator s[SL][NB];
#pragma unroll
    for (int sl = 0; sl < SL; ++sl) {
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) s[sl][nb] = mma::Accumulator{{0.0f, 0.0f, 0.0f, 0.0f}};
    }
#pragma unroll(Shape::kQInRegisters ? KC : 2)
    for (int kc = 0; kc < KC; ++kc) {
      mma::FragmentA a[SL];
#pragma unroll
      for (int sl = 0; sl < SL; ++sl) {
        if constexpr (Shape::kQInRegisters)
          a[sl] = qa[sl][kc];
        else
          a[sl] = ldsm_a<S>(q_warp + sl * kMmaWarpRows * S + kc * 16, lane);
      }
#pragma unroll
      for (int np = 0; np < NB / 2; ++np) {
        mma::FragmentB b0, b1;
        ldsm_b_pair<S>(b0, b1, k_s + np * 16 * S + kc * 16, lane);
#pragma unroll
        for (int sl = 0; sl < SL; ++sl) {
          mma::mma_m16n8k16_bf16(s[sl][2 * np], a[sl], b0, s[sl][2 * np]);
          mma::mma_m16n8k16_bf16(s[sl][2 * np + 1], a[sl], b1, s[sl][2 * np + 1]);
        }
      }
    }

    // Mask (only where the tile reaches past the warp's first row's diagonal or, before it, the
    // start of one of the lane's rows' documents: the last row's is the latest) in a pass of its
    // own, which keeps the key arithmetic out of the unmasked tiles' registers. Keys past the
    // sequence need no test of their own: a row < Tq sees keys up to row + Tk - Tq <= Tk - 1, and
    // rows past the sequence (zero-filled, finite) are never stored.
    if (k0 + KT - 1 > row0 + offset || k0 < first_key[SL - 1][1]) {
#pragma unroll
      for (int sl = 0; sl < SL; ++sl) {
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
          for (int r = 0; r < 4; ++r) {
            const int key = k0 + nb * 8 + 2 * t + r % 2, half = r / 2;
            if (key > rows[sl][half] + offset || key < first_key[sl][half])
              s[sl][nb].value[r] = -INFINITY;
          }
        }
      }
    }
    // The online softmax of each of the lane's 4 rows, the scale folded into exp2's argument
    // (scale_log2 > 0 keeps the maximum where it is and -inf at -inf).
#pragma unroll
    for (int sl = 0; sl < SL; ++sl) {
      float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int r = 0; r < 4; ++r) tile_max[r / 2] = fmaxf(tile_max[r / 2], s[sl][nb].value[r]);
      }
      float alpha[2], m_safe[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        // Row statistics live in the 4 lanes of a quad (same g): two shuffles combine them.
        tile_max[half] = fmaxf(tile_max[half], __shfl_xor_sync(kFullMask, tile_max[half], 1));
        tile_max[half] = fmaxf(tile_max[half], __shfl_xor_sync(kFullMask, tile_max[half], 2));
        const float m_new = fmaxf(m[sl][half], tile_max[half] * scale_log2);
        // A row sees no key of a tile before its document's: m_new stays -inf (and p, alpha, l
        // and o 0) until the tile with its first key; the guard keeps exp2f(-inf - -inf) from
        // ever producing a NaN.
        m_safe[half] = m_new == -INFINITY ? 0.0f : m_new;
        alpha[half] = exp2f(m[sl][half] - m_safe[half]);
        m[sl][half] = m_new;
        l[sl][half] *= alpha[half];  // per-lane partial sums; the quad adds them at the end
      }
#pragma unroll
      for (int j = 0; j < OB; ++j) {
#pragma unroll
        for (int r = 0; r < 4; ++r) o[sl][j].value[r] *= alpha[r / 2];
      }
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const float p = exp2f(fmaf(s[sl][nb].value[r], scale_log2, -m_safe[r / 2]));
          s[sl][nb].value[r] = p;
          l[sl][r / 2] += p;
        }
      }
    }

    // O += P V over the tile's keys, 16 at a time: P's A fragment for keys 16c .. 16c + 15 is S
    // blocks 2c and 2c + 1 as they are; each V ldmatrix.x4 .trans (two 8-dim blocks) feeds both
    // slices.
#pragma unroll
    for (int c = 0; c < KT / 16; ++c) {
      mma::FragmentA pa[SL];
#pragma unroll
      for (int sl = 0; sl < SL; ++sl) pa[sl] = accumulators_as_a(s[sl][2 * c], s[sl][2 * c + 1]);
#pragma unroll
      for (int jp = 0; jp < HD / 16; ++jp) {
        mma::FragmentB b0, b1;
        ldsm_b_pair_trans<S>(b0, b1, v_s + c * 16 * S + jp * 16, lane);
#pragma unroll
        for (int sl = 0; sl < SL; ++sl) {
          mma::mma_m16n8k16_bf16(o[sl][2 * jp], pa[sl], b0, o[sl][2 * jp]);
          mma::mma_m16n8k16_bf16(o[sl][2 * jp + 1], pa[sl], b1, o[sl][2 * jp + 1]);
        }
      }
    }
  }

  // Staging rows for the 16-byte output stores, 32 a warp that no other warp reads any more:
  // with Q in shared memory the warp's own Q rows; otherwise buffer n % 2, which held tile
  // n - 2 (or Q, with one tile) and which every warp left at the barrier that began the last
  // tile (that tile's prefetch, past key_end, issued nothing).
  bf16* stage = (Shape::kQInRegisters ? kv_s + n % 2 * kBuffer : q_s) + warp * Shape::kWarpRows * S;
  bf16* out_head = out + static_cast<std::int64_t>(b) * Tq * strides.out + h * HD;
#pragma unroll
  for (int sl = 0; sl < SL; ++sl) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      l[sl][half] += __shfl_xor_sync(kFullMask, l[sl][half], 1);
      l[sl][half] += __shfl_xor_sync(kFullMask, l[sl][half], 2);
    }
    const float inv[2] = {1.0f / l[sl][0], 1.0f / l[sl][1]};
    store_warp_rows<HD>(out_head, strides.out, row0 + sl * kMmaWarpRows, Tq, o[sl], inv,
                        stage + sl * kMmaWarpRows * S, packed, lane);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = rows[sl][half];
      if (row < Tq && t == 0)
        lse[(static_cast<std::int64_t>(b) * Hq + h) * Tq + row] =
            (m[sl][half] + log2f(l[sl][half])) * kLn2;
    }
  }
}

// The forward on the tensor cores; `strides` in elements (the fused-QKV views pass theirs). With
// `rope_inv_freq` (RoPE's inv_freq), q arrives unrotated and the kernel rotates it as it loads it
// and writes it back rotated (k must be rotated already: attention_forward's launcher runs RoPE
// over K first).
template <int HD>
void attention_forward_mma(bf16* out, float* lse, bf16* q, const bf16* k, const bf16* v,
                           const std::int32_t* positions, std::int64_t B, std::int64_t Tq,
                           std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv,
                           const AttentionStrides& strides, cudaStream_t stream,
                           const float* rope_inv_freq = nullptr) {
  static_assert(HD % 16 == 0, "the tensor-core kernels take head_dim in 16-wide k-chunks");
  auto kernel = attention_forward_mma_kernel<HD>;
  allow_dynamic_shared(kernel, kForwardMmaSmem<HD>);
  const dim3 grid(static_cast<unsigned>(ceil_div(Tq, ForwardMmaShape<HD>::kBlockRows)),
                  static_cast<unsigned>(Hq), static_cast<unsigned>(B));
  // The output too: `packed` also selects 16-byte stores of the output rows. A row starts on a
  // 16-byte boundary when its base does and every stride is a whole number of 16-byte packs.
  const bool packed = rows_aligned16<bf16>(HD, {q, k, v, out}) &&
                      strides_aligned16<bf16>({strides.q, strides.k, strides.v, strides.out});
  launch(kernel, grid, dim3(kAttentionThreads), kForwardMmaSmem<HD>, stream, out, lse, q, k, v,
         positions, static_cast<int>(Tq), static_cast<int>(Tk), static_cast<int>(Hq),
         static_cast<int>(Hkv), ForwardStrides{strides.q, strides.k, strides.v, strides.out},
         rope_inv_freq, kLog2e / std::sqrt(static_cast<float>(HD)), packed);
}

}  // namespace minitron::cuda
