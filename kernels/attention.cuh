// Causal attention with grouped KV heads: a tiled, flash-style forward (online softmax, the
// log-sum-exp saved) and a backward that recomputes the probabilities from it.
//
// Layout: q [B*Tq, Hq*hd], k/v [B*Tk, Hkv*hd], out like q, lse fp32 [B, Hq, Tq]. Query row t
// sees keys 0 .. t + (Tk - Tq); query head h reads KV head h / (Hq / Hkv) in place: K and V are
// never copied per group. Packed documents (kernels/attention.h): with positions (device int32
// [B*T], Tq == Tk) query t sees keys t - positions[t] .. t only, and every kernel skips the key
// (or query) tiles that lie wholly in other documents, so a packed row costs the sum of its
// documents' squares rather than the row's. Every tensor's row stride is its own argument
// (q_stride, k_stride, v_stride, o_stride, do_stride, dq_stride, dk_stride, dv_stride): q, k, v
// and their gradients may be strided views of the fused q|k|v projection.
//
// RoPE inside attention (rope_inv_freq; Tq == Tk): q and k arrive unrotated and leave rotated in
// place (the backward reads them so), and the backward's dq and dk are those of the unrotated
// inputs. The launchers run RoPE over K alone first (a key is read by every later query block:
// rotating it at each load would cost more than one pass over K); the bf16 tensor-core forward
// rotates each Q tile as it lands and writes it back, and the tensor-core backward rotates dQ and
// dK back as it stores them, so per layer RoPE moves k's bytes twice and q's once instead of q's
// and k's four times (a pass each way over q|k): 70% less at Llama-3 8B's 32/8 heads. The fp32
// CUDA-core path runs the rope kernel before and after its kernels.
//
// This file: the CUDA-core kernels (fp32 FMAs), used for fp32 storage and the reference shape of
// the algorithm, and the public launchers. bf16, the engine's dtype (head_dim a multiple of 16),
// dispatches to the tensor-core forward of kernels/attention_forward_mma.cuh and backward of
// kernels/attention_backward_mma.cuh; the D kernel below serves both backwards.
// Shape of the CUDA-core work:
//  - A block of 4 warps owns 16 query rows (4 per warp) of one (batch, head). Keys stream
//    through shared memory 32 at a time; in a tile each lane owns one key, so a score is a
//    lane-private dot product (no shuffles), and the softmax statistics need one warp
//    reduction per row and tile.
//  - Shared-memory rows are padded by 4 bytes so that the 32 lanes reading 32 different key
//    rows at the same column hit 32 different banks.
//  - Backward, deterministic without atomics: dq in one kernel (blocks over query tiles, loop
//    over keys), dk/dv in another (blocks over key tiles of one KV head, loop over the group's
//    query heads and their query tiles), each output element summed by one thread in a fixed
//    order. Both recompute P = exp(S - lse) and dP = dO V^T; D = rowsum(dO * O) comes first.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/row_strides.h"
#include "kernels/attention_backward_mma.cuh"
#include "kernels/attention_forward_mma.cuh"
#include "kernels/attention_mma.cuh"
#include "kernels/cuda/device_common.cuh"
#include "kernels/cuda/device_memory.h"
#include "kernels/rope.cuh"

namespace minitron::cuda {

constexpr int kAttentionRowsPerWarp = 4;
constexpr int kAttentionQueryTile = 16;  // warps * rows per warp
constexpr int kAttentionKeyTile = 32;    // one key per lane

// Elements per padded shared-memory row: 4 extra bytes shift consecutive rows by one bank.
template <typename T, int HD>
inline constexpr int kAttentionSmemStride = HD + static_cast<int>(4 / sizeof(T));

template <typename T, int HD>
__device__ __forceinline__ void attention_load_tile(T* tile, const T* base, std::int64_t stride,
                                                    int row0, int rows, int limit, bool packed) {
  attention_fill_tile<T, HD, kAttentionSmemStride<T, HD>>(tile, base, stride, row0, rows, limit,
                                                          packed);
}

// ---- kernels ----

// grid (ceil(Tq / 16), Hq, B), 128 threads.
template <typename T, int HD>
__global__ void attention_forward_kernel(T* out, float* lse, const T* q, const T* k, const T* v,
                                         const std::int32_t* positions, int Tq, int Tk, int Hq,
                                         int Hkv, std::int64_t q_stride, std::int64_t k_stride,
                                         std::int64_t v_stride, std::int64_t o_stride,
                                         float scale_log2, bool packed) {
  constexpr int S = kAttentionSmemStride<T, HD>;
  constexpr int R = kAttentionRowsPerWarp;
  constexpr int DPL = (HD + kWarpSize - 1) / kWarpSize;                // output dims per lane
  MINITRON_DYNAMIC_SHARED(T, q_s);                                     // [16][S]
  T* k_s = q_s + kAttentionQueryTile * S;                              // [32][S]
  T* v_s = k_s + kAttentionKeyTile * S;                                // [32][S]
  float* p_s = reinterpret_cast<float*>(v_s + kAttentionKeyTile * S);  // [16][32]

  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kAttentionQueryTile;
  const int hk = h / (Hq / Hkv), offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const T* q_head = q + static_cast<std::int64_t>(b) * Tq * q_stride + h * HD;
  const T* k_head = k + static_cast<std::int64_t>(b) * Tk * k_stride + hk * HD;
  const T* v_head = v + static_cast<std::int64_t>(b) * Tk * v_stride + hk * HD;

  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;

  attention_load_tile<T, HD>(q_s, q_head, q_stride, q0, kAttentionQueryTile, Tq, packed);

  float m[R], l[R], o[R][DPL];
  int first_key[R];  // each row's document start (0 without positions)
#pragma unroll
  for (int r = 0; r < R; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int j = 0; j < DPL; ++j) o[r][j] = 0.0f;
    const int t = q0 + warp * R + r;
    first_key[r] = t < Tq ? attention_first_key(row_positions, t) : 0;
  }
  const int last_query = (q0 + kAttentionQueryTile < Tq ? q0 + kAttentionQueryTile : Tq) - 1;
  const int key_end = last_query + offset + 1 < Tk ? last_query + offset + 1 : Tk;
  const T* q_rows = q_s + warp * R * S;
  float* p_rows = p_s + warp * R * kAttentionKeyTile;

  for (int k0 = attention_first_key_tile(row_positions, q0, kAttentionKeyTile); k0 < key_end;
       k0 += kAttentionKeyTile) {
    __syncthreads();  // the previous tile is consumed (and the query tile is written)
    attention_load_tile<T, HD>(k_s, k_head, k_stride, k0, kAttentionKeyTile, Tk, packed);
    attention_load_tile<T, HD>(v_s, v_head, v_stride, k0, kAttentionKeyTile, Tk, packed);
    __syncthreads();

    float s[R] = {};
    const T* k_row = k_s + lane * S;
#pragma unroll 8
    for (int d = 0; d < HD; ++d) {
      const float kd = to_float(k_row[d]);
#pragma unroll
      for (int r = 0; r < R; ++r) s[r] += to_float(q_rows[r * S + d]) * kd;
    }
    const int key = k0 + lane;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int t = q0 + warp * R + r;
      const bool visible = key < Tk && key <= t + offset && key >= first_key[r];
      const float x = visible ? s[r] * scale_log2 : -INFINITY;
      const float m_new = fmaxf(m[r], warp_max(x));
      // A row sees no key of a tile before its document's: m_new stays -inf (and p, alpha, l
      // and o 0) until the tile with its first key; the guard keeps exp2f(-inf - -inf) from
      // ever producing a NaN.
      const float m_safe = m_new == -INFINITY ? 0.0f : m_new;
      const float p = exp2f(x - m_safe);
      const float alpha = exp2f(m[r] - m_safe);
      l[r] = l[r] * alpha + warp_sum(p);
      m[r] = m_new;
#pragma unroll
      for (int j = 0; j < DPL; ++j) o[r][j] *= alpha;
      p_rows[r * kAttentionKeyTile + lane] = p;
    }
    __syncwarp();
    for (int kk = 0; kk < kAttentionKeyTile; ++kk) {
#pragma unroll
      for (int j = 0; j < DPL; ++j) {
        const int d = lane + j * kWarpSize;
        if (d < HD) {
          const float vd = to_float(v_s[kk * S + d]);
#pragma unroll
          for (int r = 0; r < R; ++r) o[r][j] += p_rows[r * kAttentionKeyTile + kk] * vd;
        }
      }
    }
    __syncwarp();
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int t = q0 + warp * R + r;
    if (t >= Tq) continue;
    const float inv = 1.0f / l[r];
    T* o_row = out + (static_cast<std::int64_t>(b) * Tq + t) * o_stride + h * HD;
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      const int d = lane + j * kWarpSize;
      if (d < HD) o_row[d] = from_float<T>(o[r][j] * inv);
    }
    if (lane == 0)
      lse[(static_cast<std::int64_t>(b) * Hq + h) * Tq + t] = (m[r] + log2f(l[r])) * kLn2;
  }
}

// D[b, h, t] = sum_d dout * out over one head row; one warp per row. dout and out rows are
// `dout_stride` and `out_stride` elements apart (Hq * HD unless they are views into wider rows).
template <typename T, int HD>
__global__ void attention_backward_dot_kernel(float* D, const T* dout, const T* out,
                                              std::int64_t rows, int Tq, int Hq,
                                              std::int64_t do_stride, std::int64_t o_stride) {
  const std::int64_t w =
      blockIdx.x * static_cast<std::int64_t>(blockDim.x / kWarpSize) + threadIdx.x / kWarpSize;
  if (w >= rows) return;  // whole warps leave together
  const int lane = threadIdx.x % kWarpSize;
  const std::int64_t t = w % Tq, h = (w / Tq) % Hq, b = w / (static_cast<std::int64_t>(Tq) * Hq);
  const std::int64_t row = b * Tq + t;
  const T* do_row = dout + row * do_stride + h * HD;
  const T* o_row = out + row * o_stride + h * HD;
  float sum = 0.0f;
  for (int d = lane; d < HD; d += kWarpSize) sum += to_float(do_row[d]) * to_float(o_row[d]);
  sum = warp_sum(sum);
  if (lane == 0) D[w] = sum;
}

// dq_i = scale * sum_j dS_ij k_j, dS_ij = P_ij (dO_i . v_j - D_i); grid (ceil(Tq / 16), Hq, B).
template <typename T, int HD>
__global__ void attention_backward_dq_kernel(T* dq, const T* dout, const float* lse, const float* D,
                                             const T* q, const T* k, const T* v,
                                             const std::int32_t* positions, int Tq, int Tk, int Hq,
                                             int Hkv, std::int64_t q_stride, std::int64_t k_stride,
                                             std::int64_t v_stride, std::int64_t do_stride,
                                             std::int64_t dq_stride, float scale, bool packed) {
  constexpr int S = kAttentionSmemStride<T, HD>;
  constexpr int R = kAttentionRowsPerWarp;
  constexpr int DPL = (HD + kWarpSize - 1) / kWarpSize;
  MINITRON_DYNAMIC_SHARED(T, q_s);                                      // [16][S]
  T* do_s = q_s + kAttentionQueryTile * S;                              // [16][S]
  T* k_s = do_s + kAttentionQueryTile * S;                              // [32][S]
  T* v_s = k_s + kAttentionKeyTile * S;                                 // [32][S]
  float* ds_s = reinterpret_cast<float*>(v_s + kAttentionKeyTile * S);  // [16][32]

  const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kAttentionQueryTile;
  const int hk = h / (Hq / Hkv), offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const std::int64_t query_row0 = static_cast<std::int64_t>(b) * Tq;  // the batch's first row
  const T* k_head = k + static_cast<std::int64_t>(b) * Tk * k_stride + hk * HD;
  const T* v_head = v + static_cast<std::int64_t>(b) * Tk * v_stride + hk * HD;
  const std::int64_t stat0 = (static_cast<std::int64_t>(b) * Hq + h) * Tq;

  attention_load_tile<T, HD>(q_s, q + query_row0 * q_stride + h * HD, q_stride, q0,
                             kAttentionQueryTile, Tq, packed);
  attention_load_tile<T, HD>(do_s, dout + query_row0 * do_stride + h * HD, do_stride, q0,
                             kAttentionQueryTile, Tq, packed);

  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;
  float row_lse[R], row_D[R], acc[R][DPL];
  int first_key[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int t = q0 + warp * R + r;
    row_lse[r] = t < Tq ? lse[stat0 + t] : 0.0f;
    row_D[r] = t < Tq ? D[stat0 + t] : 0.0f;
    first_key[r] = t < Tq ? attention_first_key(row_positions, t) : 0;
#pragma unroll
    for (int j = 0; j < DPL; ++j) acc[r][j] = 0.0f;
  }
  const int last_query = (q0 + kAttentionQueryTile < Tq ? q0 + kAttentionQueryTile : Tq) - 1;
  const int key_end = last_query + offset + 1 < Tk ? last_query + offset + 1 : Tk;
  const T* q_rows = q_s + warp * R * S;
  const T* do_rows = do_s + warp * R * S;
  float* ds_rows = ds_s + warp * R * kAttentionKeyTile;

  for (int k0 = attention_first_key_tile(row_positions, q0, kAttentionKeyTile); k0 < key_end;
       k0 += kAttentionKeyTile) {
    __syncthreads();
    attention_load_tile<T, HD>(k_s, k_head, k_stride, k0, kAttentionKeyTile, Tk, packed);
    attention_load_tile<T, HD>(v_s, v_head, v_stride, k0, kAttentionKeyTile, Tk, packed);
    __syncthreads();

    float s[R] = {}, dp[R] = {};
    const T* k_row = k_s + lane * S;
    const T* v_row = v_s + lane * S;
#pragma unroll 4
    for (int d = 0; d < HD; ++d) {
      const float kd = to_float(k_row[d]), vd = to_float(v_row[d]);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        s[r] += to_float(q_rows[r * S + d]) * kd;
        dp[r] += to_float(do_rows[r * S + d]) * vd;
      }
    }
    const int key = k0 + lane;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int t = q0 + warp * R + r;
      const bool visible = t < Tq && key < Tk && key <= t + offset && key >= first_key[r];
      const float p = visible ? expf(s[r] * scale - row_lse[r]) : 0.0f;
      ds_rows[r * kAttentionKeyTile + lane] = p * (dp[r] - row_D[r]);
    }
    __syncwarp();
    for (int kk = 0; kk < kAttentionKeyTile; ++kk) {
#pragma unroll
      for (int j = 0; j < DPL; ++j) {
        const int d = lane + j * kWarpSize;
        if (d < HD) {
          const float kd = to_float(k_s[kk * S + d]);
#pragma unroll
          for (int r = 0; r < R; ++r) acc[r][j] += ds_rows[r * kAttentionKeyTile + kk] * kd;
        }
      }
    }
    __syncwarp();
  }

#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int t = q0 + warp * R + r;
    if (t >= Tq) continue;
    T* dq_row = dq + (query_row0 + t) * dq_stride + h * HD;
#pragma unroll
    for (int j = 0; j < DPL; ++j) {
      const int d = lane + j * kWarpSize;
      if (d < HD) dq_row[d] = from_float<T>(acc[r][j] * scale);
    }
  }
}

// dv_j = sum_i P_ij dO_i, dk_j = scale * sum_i dS_ij q_i over the group's query heads and the
// queries that see key j; grid (ceil(Tk / 32), Hkv, B). Thread (warp w, lane) owns key
// j0 + lane and the dims w, w + 4, w + 8, ...
template <typename T, int HD>
__global__ void attention_backward_dkv_kernel(T* dk, T* dv, const T* dout, const float* lse,
                                              const float* D, const T* q, const T* k, const T* v,
                                              const std::int32_t* positions, int Tq, int Tk, int Hq,
                                              int Hkv, std::int64_t q_stride, std::int64_t k_stride,
                                              std::int64_t v_stride, std::int64_t do_stride,
                                              std::int64_t dk_stride, std::int64_t dv_stride,
                                              float scale, bool packed) {
  constexpr int S = kAttentionSmemStride<T, HD>;
  constexpr int R = kAttentionRowsPerWarp;
  constexpr int kWarps = kAttentionThreads / kWarpSize;
  constexpr int DPT = (HD + kWarps - 1) / kWarps;                         // dims per thread
  MINITRON_DYNAMIC_SHARED(T, k_s);                                        // [32][S]
  T* v_s = k_s + kAttentionKeyTile * S;                                   // [32][S]
  T* q_s = v_s + kAttentionKeyTile * S;                                   // [16][S]
  T* do_s = q_s + kAttentionQueryTile * S;                                // [16][S]
  float* p_s = reinterpret_cast<float*>(do_s + kAttentionQueryTile * S);  // [16][32]
  float* ds_s = p_s + kAttentionQueryTile * kAttentionKeyTile;            // [16][32]

  const int b = blockIdx.z, hk = blockIdx.y, j0 = blockIdx.x * kAttentionKeyTile;
  const int group = Hq / Hkv, offset = Tk - Tq;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const std::int64_t key_row0 = static_cast<std::int64_t>(b) * Tk;  // the batch's first key row

  attention_load_tile<T, HD>(k_s, k + key_row0 * k_stride + hk * HD, k_stride, j0,
                             kAttentionKeyTile, Tk, packed);
  attention_load_tile<T, HD>(v_s, v + key_row0 * v_stride + hk * HD, v_stride, j0,
                             kAttentionKeyTile, Tk, packed);

  float dk_acc[DPT], dv_acc[DPT];
#pragma unroll
  for (int i = 0; i < DPT; ++i) dk_acc[i] = dv_acc[i] = 0.0f;

  const int key = j0 + lane;
  const int first_query = j0 - offset > 0 ? j0 - offset : 0;
  const int tile_begin = first_query / kAttentionQueryTile * kAttentionQueryTile;
  const std::int32_t* row_positions =
      positions ? positions + static_cast<std::int64_t>(b) * Tq : nullptr;
  const int last_key = (j0 + kAttentionKeyTile < Tk ? j0 + kAttentionKeyTile : Tk) - 1;
  const int query_end =
      attention_query_end(row_positions, tile_begin, Tq, kAttentionQueryTile, last_key);
  const T* k_row = k_s + lane * S;
  const T* v_row = v_s + lane * S;

  for (int h = hk * group; h < (hk + 1) * group; ++h) {
    const std::int64_t query_row0 = static_cast<std::int64_t>(b) * Tq;
    const std::int64_t stat0 = (static_cast<std::int64_t>(b) * Hq + h) * Tq;
    for (int q0 = tile_begin; q0 < query_end; q0 += kAttentionQueryTile) {
      __syncthreads();  // the previous query tile is consumed
      attention_load_tile<T, HD>(q_s, q + query_row0 * q_stride + h * HD, q_stride, q0,
                                 kAttentionQueryTile, Tq, packed);
      attention_load_tile<T, HD>(do_s, dout + query_row0 * do_stride + h * HD, do_stride, q0,
                                 kAttentionQueryTile, Tq, packed);
      __syncthreads();

      // Scores for the warp's 4 query rows against this lane's key.
      float s[R] = {}, dp[R] = {};
      const T* q_rows = q_s + warp * R * S;
      const T* do_rows = do_s + warp * R * S;
#pragma unroll 4
      for (int d = 0; d < HD; ++d) {
        const float kd = to_float(k_row[d]), vd = to_float(v_row[d]);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          s[r] += to_float(q_rows[r * S + d]) * kd;
          dp[r] += to_float(do_rows[r * S + d]) * vd;
        }
      }
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int i = warp * R + r, t = q0 + i;
        const bool visible =
            t < Tq && key < Tk && key <= t + offset && key >= attention_first_key(row_positions, t);
        const float p = visible ? expf(s[r] * scale - lse[stat0 + t]) : 0.0f;
        p_s[i * kAttentionKeyTile + lane] = p;
        ds_s[i * kAttentionKeyTile + lane] = visible ? p * (dp[r] - D[stat0 + t]) : 0.0f;
      }
      __syncthreads();

      for (int i = 0; i < kAttentionQueryTile; ++i) {
        const float p = p_s[i * kAttentionKeyTile + lane];
        const float ds = ds_s[i * kAttentionKeyTile + lane];
#pragma unroll
        for (int c = 0; c < DPT; ++c) {
          const int d = warp + c * kWarps;
          if (d < HD) {
            dv_acc[c] += p * to_float(do_s[i * S + d]);
            dk_acc[c] += ds * to_float(q_s[i * S + d]);
          }
        }
      }
    }
  }

  if (key < Tk) {
    T* dk_row = dk + (key_row0 + key) * dk_stride + hk * HD;
    T* dv_row = dv + (key_row0 + key) * dv_stride + hk * HD;
#pragma unroll
    for (int c = 0; c < DPT; ++c) {
      const int d = warp + c * kWarps;
      if (d < HD) {
        dk_row[d] = from_float<T>(dk_acc[c] * scale);
        dv_row[d] = from_float<T>(dv_acc[c]);
      }
    }
  }
}

// ---- launchers ----

inline void check_attention_shape(std::int64_t B, std::int64_t Tq, std::int64_t Tk, std::int64_t Hq,
                                  std::int64_t Hkv) {
  if (Hkv <= 0 || Hq % Hkv != 0)
    fail_expected("attention", str(Hq, " query heads over ", Hkv, " KV heads"),
                  "query heads a multiple of KV heads");
  if (Tq > Tk) fail_expected("attention", str(Tq, " queries over ", Tk, " keys"), "Tq <= Tk");
  if (B > 65535 || Hq > 65535)
    fail_expected("attention", str("batch ", B, ", heads ", Hq), "both <= 65535 (grid limits)");
}

// st: the resolved row strides (none 0).
// With rope_inv_freq, q and k arrive unrotated and leave rotated: RoPE runs over K first (a
// key is read by every later query block, so rotating it on each load would cost more than one
// pass over K alone), and the tensor-core kernel rotates Q as it loads it; the CUDA-core path
// (fp32 storage, the algorithm's reference shape) runs RoPE over Q before it.
template <typename T, int HD>
void attention_forward_hd(T* out, float* lse, T* q, T* k, const T* v, const std::int32_t* positions,
                          std::int64_t B, std::int64_t Tq, std::int64_t Tk, std::int64_t Hq,
                          std::int64_t Hkv, const AttentionStrides& st, cudaStream_t stream,
                          const float* rope_inv_freq) {
  if (rope_inv_freq) rope_forward<T>(k, rope_inv_freq, B, Tk, Hkv, HD, 0, stream, positions, st.k);
  if constexpr (std::is_same_v<T, bf16> && HD % 16 == 0) {
    // bf16: the tensor-core kernel (fp32 tiles stay on the CUDA-core kernel below).
    attention_forward_mma<HD>(out, lse, q, k, v, positions, B, Tq, Tk, Hq, Hkv, st, stream,
                              rope_inv_freq);
  } else {
    if (rope_inv_freq) rope_forward<T>(q, rope_inv_freq, B, Tq, Hq, HD, 0, stream, positions, st.q);
    constexpr int S = kAttentionSmemStride<T, HD>;
    const std::size_t smem = (kAttentionQueryTile + 2 * kAttentionKeyTile) * S * sizeof(T) +
                             kAttentionQueryTile * kAttentionKeyTile * sizeof(float);
    auto kernel = attention_forward_kernel<T, HD>;
    allow_dynamic_shared(kernel, smem);
    const dim3 grid(static_cast<unsigned>(ceil_div(Tq, kAttentionQueryTile)),
                    static_cast<unsigned>(Hq), static_cast<unsigned>(B));
    const bool packed =
        rows_aligned16<T>(HD, {q, k, v}) && strides_aligned16<T>({st.q, st.k, st.v});
    launch(kernel, grid, dim3(kAttentionThreads), smem, stream, out, lse, q, k, v, positions,
           static_cast<int>(Tq), static_cast<int>(Tk), static_cast<int>(Hq), static_cast<int>(Hkv),
           st.q, st.k, st.v, st.out, kLog2e / std::sqrt(static_cast<float>(HD)), packed);
  }
}

// With rope_inv_freq, q and k are the rotated ones the forward left and dq, dk come out as the
// gradients of the unrotated inputs: the tensor-core kernels rotate them back in the shared rows
// that stage their stores, the CUDA-core path runs RoPE's backward over them after.
template <typename T, int HD>
void attention_backward_hd(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse,
                           const T* q, const T* k, const T* v, const std::int32_t* positions,
                           std::int64_t B, std::int64_t T_, std::int64_t Hq, std::int64_t Hkv,
                           const AttentionStrides& st, float* workspace, cudaStream_t stream,
                           const float* rope_inv_freq) {
  const int Ti = static_cast<int>(T_), Hqi = static_cast<int>(Hq);
  const std::int64_t rows = B * Hq * T_;
  constexpr int kDotWarps = 8;
  launch(attention_backward_dot_kernel<T, HD>,
         dim3(static_cast<unsigned>(ceil_div(rows, kDotWarps))), dim3(kDotWarps * kWarpSize), 0,
         stream, workspace, dout, out, rows, Ti, Hqi, st.dout, st.out);

  if constexpr (std::is_same_v<T, bf16> && HD % 16 == 0) {
    // bf16: the tensor-core dq and dk/dv kernels (attention_backward_mma.cuh).
    attention_backward_mma<HD>(dq, dk, dv, dout, lse, workspace, q, k, v, positions, B, T_, Hq, Hkv,
                               st, stream, rope_inv_freq);
  } else {
    constexpr int S = kAttentionSmemStride<T, HD>;
    const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
    const int Hkvi = static_cast<int>(Hkv);
    const bool packed =
        rows_aligned16<T>(HD, {q, k, v, dout}) && strides_aligned16<T>({st.q, st.k, st.v, st.dout});
    const std::size_t dq_smem = (2 * kAttentionQueryTile + 2 * kAttentionKeyTile) * S * sizeof(T) +
                                kAttentionQueryTile * kAttentionKeyTile * sizeof(float);
    auto dq_kernel = attention_backward_dq_kernel<T, HD>;
    allow_dynamic_shared(dq_kernel, dq_smem);
    launch(dq_kernel,
           dim3(static_cast<unsigned>(ceil_div(T_, kAttentionQueryTile)), static_cast<unsigned>(Hq),
                static_cast<unsigned>(B)),
           dim3(kAttentionThreads), dq_smem, stream, dq, dout, lse,
           static_cast<const float*>(workspace), q, k, v, positions, Ti, Ti, Hqi, Hkvi, st.q, st.k,
           st.v, st.dout, st.dq, scale, packed);

    const std::size_t dkv_smem = (2 * kAttentionKeyTile + 2 * kAttentionQueryTile) * S * sizeof(T) +
                                 2 * kAttentionQueryTile * kAttentionKeyTile * sizeof(float);
    auto dkv_kernel = attention_backward_dkv_kernel<T, HD>;
    allow_dynamic_shared(dkv_kernel, dkv_smem);
    launch(dkv_kernel,
           dim3(static_cast<unsigned>(ceil_div(T_, kAttentionKeyTile)), static_cast<unsigned>(Hkv),
                static_cast<unsigned>(B)),
           dim3(kAttentionThreads), dkv_smem, stream, dk, dv, dout, lse,
           static_cast<const float*>(workspace), q, k, v, positions, Ti, Ti, Hqi, Hkvi, st.q, st.k,
           st.v, st.dout, st.dk, st.dv, scale, packed);
    if (rope_inv_freq) {
      rope_backward<T>(dq, rope_inv_freq, B, T_, Hq, HD, 0, stream, positions, st.dq);
      rope_backward<T>(dk, rope_inv_freq, B, T_, Hkv, HD, 0, stream, positions, st.dk);
    }
  }
}

// The head sizes with compiled kernels (each is a template instance with its own registers).
#define MINITRON_ATTENTION_HEAD_DIMS(X) X(16) X(32) X(64) X(96) X(128)

[[noreturn]] inline void unsupported_head_dim(std::int64_t hd) {
  fail_expected("attention", str("head_dim ", hd), "one of 16, 32, 64, 96, 128");
}

// positions: device int32 [B*T] of packed documents (Tq == Tk), or null. strides: each
// tensor's row stride (0: dense). rope_inv_freq: RoPE applied inside (q and k in place, see
// attention_forward_hd; Tq == Tk), or none.
template <typename T>
void attention_forward(T* out, float* lse, T* q, T* k, const T* v, std::int64_t B, std::int64_t Tq,
                       std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv, std::int64_t hd,
                       cudaStream_t stream, const std::int32_t* positions = nullptr,
                       const AttentionStrides& strides = {}, const float* rope_inv_freq = nullptr) {
  check_attention_shape(B, Tq, Tk, Hq, Hkv);
  if (positions && Tq != Tk)
    fail_expected("attention", str("packed documents over ", Tq, " queries and ", Tk, " keys"),
                  "Tq == Tk (no KV cache)");
  if (rope_inv_freq && Tq != Tk)
    fail_expected("attention", str("RoPE inside attention over ", Tq, " queries and ", Tk, " keys"),
                  "Tq == Tk (a KV cache holds keys rotated already)");
  if (B <= 0 || Tq <= 0) return;
  const AttentionStrides st = strides.resolved(Hq * hd, Hkv * hd);
  switch (hd) {
#define MINITRON_CASE(HD)                                                                    \
  case HD:                                                                                   \
    return attention_forward_hd<T, HD>(out, lse, q, k, v, positions, B, Tq, Tk, Hq, Hkv, st, \
                                       stream, rope_inv_freq);
    MINITRON_ATTENTION_HEAD_DIMS(MINITRON_CASE)
#undef MINITRON_CASE
    default: unsupported_head_dim(hd);
  }
}

// Overwrites dq, dk, dv; training shapes (Tq == Tk == T). rope_inv_freq: as the forward's (dq and
// dk then the gradients of the unrotated q and k), or none.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse,
                        const T* q, const T* k, const T* v, std::int64_t B, std::int64_t T_,
                        std::int64_t Hq, std::int64_t Hkv, std::int64_t hd, float* workspace,
                        cudaStream_t stream, const std::int32_t* positions = nullptr,
                        const AttentionStrides& strides = {},
                        const float* rope_inv_freq = nullptr) {
  check_attention_shape(B, T_, T_, Hq, Hkv);
  if (B <= 0 || T_ <= 0) return;
  const AttentionStrides st = strides.resolved(Hq * hd, Hkv * hd);
  switch (hd) {
#define MINITRON_CASE(HD)                                                                          \
  case HD:                                                                                         \
    return attention_backward_hd<T, HD>(dq, dk, dv, dout, out, lse, q, k, v, positions, B, T_, Hq, \
                                        Hkv, st, workspace, stream, rope_inv_freq);
    MINITRON_ATTENTION_HEAD_DIMS(MINITRON_CASE)
#undef MINITRON_CASE
    default: unsupported_head_dim(hd);
  }
}

}  // namespace minitron::cuda
