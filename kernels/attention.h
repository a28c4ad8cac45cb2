// Causal attention with grouped KV heads (GQA), CPU reference.
//
// q [B*Tq, Hq*hd], k/v [B*Tk, Hkv*hd], out [B*Tq, Hq*hd], lse [B, Hq, Tq].
// Query row t attends to keys 0 .. t + (Tk - Tq); query head h reads KV head h / (Hq / Hkv)
// in place (no copies of K/V per group). Scale 1/sqrt(hd). Sums run in T: fp32 for the float
// engine, like the CUDA engine's accumulators; fp64 for gradient checks.
//
// Packed documents (padding-free packing, FlashAttention's variable-length attention): with
// `positions` (int32 [B*T], Tq == Tk == T) each row holds several documents and positions[b*T+t]
// is token t's position inside its document (0 at a document's first token, then +1 per
// token). Query t then attends to keys t - positions[t] .. t: its own document, causally.
// Document starts never decrease along a row, which both passes use to stop early. Null
// positions is one document per row (keys from 0).
//
// The backward recomputes the probabilities from the saved log-sum-exp, as flash-attention
// does: P_ij = exp(S_ij - lse_i), D_i = sum(dout_i * out_i), dS_ij = P_ij (dout_i.v_j - D_i).
// It runs two passes so that every output element is owned by one thread and summed in a
// fixed order (deterministic for any thread count): one over query rows for dq, one over key
// rows for dk and dv (each key row loops over the query heads of its group, then the queries).
//
// `strides` gives each tensor's row stride (0: dense), so q, k, v (dq, dk, dv) may be strided
// views of the fused q|k|v projection (its gradient).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/row_strides.h"
#include "kernels/cpu/parallel.h"
#include "util/error.h"

namespace minitron::cpu {

template <typename T>
T dot(const T* a, const T* b, std::int64_t n) {
  T sum = 0;
  // The vector reduction order is fixed at compile time, so results stay deterministic.
#pragma omp simd reduction(+ : sum)
  for (std::int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Scratch the two passes need, in elements of T: one row of Tk scores per thread for the
// forward, D [B, Hq, Tq] for the backward. Callers that run attention every step (the CPU
// backend) keep one buffer of the larger size and pass it in; a null workspace makes the call
// allocate its own, which is what a test wants.
inline std::int64_t attention_forward_workspace(std::int64_t Tk) {
#ifdef _OPENMP
  return Tk * omp_get_max_threads();
#else
  return Tk;
#endif
}
inline std::int64_t attention_backward_workspace(std::int64_t B, std::int64_t Hq, std::int64_t Tq) {
  return B * Hq * Tq;
}

// The caller's workspace, or (null) `size` elements allocated into `own` for this call.
template <typename T>
T* workspace_or_own(T* workspace, std::int64_t size, std::vector<T>& own) {
  if (workspace) return workspace;
  own.resize(static_cast<std::size_t>(size));
  return own.data();
}

inline int current_thread() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

inline void check_attention_shape(std::int64_t Tq, std::int64_t Tk, std::int64_t Hq,
                                  std::int64_t Hkv, std::int64_t hd,
                                  const std::int32_t* positions = nullptr) {
  MINITRON_ASSERT(Hkv > 0 && Hq % Hkv == 0, "attention: Hq ", Hq, " must be a multiple of Hkv ",
                  Hkv);
  MINITRON_ASSERT(Tq <= Tk, "attention: Tq ", Tq, " must not exceed Tk ", Tk);
  MINITRON_ASSERT(hd > 0, "attention: head_dim ", hd);
  MINITRON_ASSERT(!positions || Tq == Tk, "attention: packed documents need Tq ", Tq, " == Tk ",
                  Tk);
}

// The first key query t of row b sees: its document's first token, or 0 without positions.
inline std::int64_t document_start(const std::int32_t* positions, std::int64_t b, std::int64_t T,
                                   std::int64_t t) {
  return positions ? t - positions[b * T + t] : 0;
}

template <typename T>
void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, std::int64_t B,
                       std::int64_t Tq, std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv,
                       std::int64_t hd, const std::int32_t* positions = nullptr,
                       T* workspace = nullptr, const AttentionStrides& strides = {}) {
  check_attention_shape(Tq, Tk, Hq, Hkv, hd, positions);
  std::vector<T> own;
  workspace = workspace_or_own(workspace, attention_forward_workspace(Tk), own);
  const std::int64_t group = Hq / Hkv, offset = Tk - Tq;
  const AttentionStrides st = strides.resolved(Hq * hd, Hkv * hd);
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
#pragma omp parallel if (B * Hq * Tq * Tk * hd >= kMinParallelWork)
  {
    T* p = workspace + current_thread() * Tk;  // this thread's score row
#pragma omp for schedule(static)
    for (std::int64_t task = 0; task < B * Hq * Tq; ++task) {
      const std::int64_t t = task % Tq, h = (task / Tq) % Hq, b = task / (Tq * Hq);
      const std::int64_t hk = h / group, keys = t + offset + 1;
      const std::int64_t first = document_start(positions, b, Tq, t);
      const T* qi = q + (b * Tq + t) * st.q + h * hd;
      const T* kb = k + b * Tk * st.k + hk * hd;
      const T* vb = v + b * Tk * st.v + hk * hd;
      T max = -std::numeric_limits<T>::infinity();
      for (std::int64_t j = first; j < keys; ++j) {
        p[j] = dot(qi, kb + j * st.k, hd) * scale;
        max = std::max(max, p[j]);
      }
      T sum = 0;
      for (std::int64_t j = first; j < keys; ++j) {
        p[j] = std::exp(p[j] - max);
        sum += p[j];
      }
      lse[(b * Hq + h) * Tq + t] = max + std::log(sum);
      T* o = out + (b * Tq + t) * st.out + h * hd;
      std::fill_n(o, hd, T(0));
      const T inv = T(1) / sum;
      for (std::int64_t j = first; j < keys; ++j) {
        const T w = p[j] * inv;
        const T* vj = vb + j * st.v;
#pragma omp simd
        for (std::int64_t d = 0; d < hd; ++d) o[d] += w * vj[d];
      }
    }
  }
}

// Overwrites dq [B*Tq, Hq*hd], dk and dv [B*Tk, Hkv*hd].
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q,
                        const T* k, const T* v, std::int64_t B, std::int64_t Tq, std::int64_t Tk,
                        std::int64_t Hq, std::int64_t Hkv, std::int64_t hd,
                        const std::int32_t* positions = nullptr, T* workspace = nullptr,
                        const AttentionStrides& strides = {}) {
  check_attention_shape(Tq, Tk, Hq, Hkv, hd, positions);
  std::vector<T> own;
  workspace = workspace_or_own(workspace, attention_backward_workspace(B, Hq, Tq), own);
  T* D = workspace;  // D_i, laid out like lse
  const std::int64_t group = Hq / Hkv, offset = Tk - Tq;
  const AttentionStrides st = strides.resolved(Hq * hd, Hkv * hd);
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));

  // Pass 1, per query row: D_i, then dq_i = scale * sum_j dS_ij k_j.
#pragma omp parallel for schedule(static) if (B * Hq * Tq * Tk * hd >= kMinParallelWork)
  for (std::int64_t task = 0; task < B * Hq * Tq; ++task) {
    const std::int64_t t = task % Tq, h = (task / Tq) % Hq, b = task / (Tq * Hq);
    const std::int64_t hk = h / group, keys = t + offset + 1;
    const std::int64_t row = b * Tq + t;
    const T* qi = q + row * st.q + h * hd;
    const T* doi = dout + row * st.dout + h * hd;
    const T Di = dot(doi, out + row * st.out + h * hd, hd);
    const T li = lse[(b * Hq + h) * Tq + t];
    D[task] = Di;
    T* dqi = dq + row * st.dq + h * hd;
    std::fill_n(dqi, hd, T(0));
    const T* kb = k + b * Tk * st.k + hk * hd;
    const T* vb = v + b * Tk * st.v + hk * hd;
    for (std::int64_t j = document_start(positions, b, Tq, t); j < keys; ++j) {
      const T* kj = kb + j * st.k;
      const T pij = std::exp(dot(qi, kj, hd) * scale - li);
      const T ds = pij * (dot(doi, vb + j * st.v, hd) - Di) * scale;
#pragma omp simd
      for (std::int64_t d = 0; d < hd; ++d) dqi[d] += ds * kj[d];
    }
  }

  // Pass 2, per key row of a KV head: dv_j = sum P_ij dout_i, dk_j = scale * sum dS_ij q_i,
  // over the group's query heads and the queries that see key j (t + offset >= j, and key j in
  // t's document: the queries from j to the end of j's document).
#pragma omp parallel for schedule(static) if (B * Hq * Tq * Tk * hd >= kMinParallelWork)
  for (std::int64_t task = 0; task < B * Hkv * Tk; ++task) {
    const std::int64_t j = task % Tk, hk = (task / Tk) % Hkv, b = task / (Tk * Hkv);
    const std::int64_t krow = b * Tk + j;
    const T* kj = k + krow * st.k + hk * hd;
    const T* vj = v + krow * st.v + hk * hd;
    T* dkj = dk + krow * st.dk + hk * hd;
    T* dvj = dv + krow * st.dv + hk * hd;
    std::fill_n(dkj, hd, T(0));
    std::fill_n(dvj, hd, T(0));
    const std::int64_t first_query = std::max<std::int64_t>(0, j - offset);
    for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
      for (std::int64_t t = first_query; t < Tq; ++t) {
        if (document_start(positions, b, Tq, t) > j) break;  // a later document: all after too
        const std::int64_t row = b * Tq + t;
        const std::int64_t stat = (b * Hq + h) * Tq + t;
        const T* qi = q + row * st.q + h * hd;
        const T* doi = dout + row * st.dout + h * hd;
        const T pij = std::exp(dot(qi, kj, hd) * scale - lse[stat]);
        const T ds = pij * (dot(doi, vj, hd) - D[stat]) * scale;
#pragma omp simd
        for (std::int64_t d = 0; d < hd; ++d) {
          dvj[d] += pij * doi[d];
          dkj[d] += ds * qi[d];
        }
      }
    }
  }
}

}  // namespace minitron::cpu
