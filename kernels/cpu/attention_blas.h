// Causal GQA attention for the CPU engine, on BLAS tiles: the fast path CpuBackend uses.
// kernels/attention.h stays the plain reference (tests and the CUDA emulator compare against
// it); this computes the same function with the same layouts and the same lse, differing only
// in float rounding (GEMM sums in a blocked order instead of index order).
//
// Forward, per (batch, query head, tile of kTile query rows): S = scale * Q_tile K^T over the
// keys the tile can see (GEMM), a masked softmax per row (lse saved), O_tile = P V (GEMM).
// Backward, per (batch, KV head): for each query head of the group and each query tile,
// recompute P from lse, dP = dO V^T, dS = P (dP - D) scale, then dQ_tile = dS K, dV += P^T dO,
// dK += dS^T Q (GEMMs). GQA reads the KV head's columns in place through the leading
// dimensions; nothing is copied. Row strides (AttentionStrides) enter as leading dimensions too.
//
// Deterministic for any thread count: every output element is owned by one task, a task runs
// on one thread with single-threaded BLAS, and dK/dV accumulate over heads and tiles in a
// fixed order.
#pragma once

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cpu/exp.h"

namespace minitron::cpu {

inline constexpr std::int64_t kAttentionTile = 64;  // query rows per GEMM tile

// Per-thread scratch, in elements: two tile x Tk score blocks and the tile's D values.
inline std::int64_t attention_tiles_workspace(std::int64_t Tk) {
  const std::int64_t per_thread = 2 * kAttentionTile * Tk + kAttentionTile;
#ifdef _OPENMP
  return per_thread * omp_get_max_threads();
#else
  return per_thread;
#endif
}

// Row-major C = alpha op(A) op(B) + beta C with explicit leading dimensions.
template <typename T>
void gemm_strided(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K,
                  T alpha, const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
                  std::int64_t ldc) {
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N),
                static_cast<blasint>(K), alpha, a, static_cast<blasint>(lda), b,
                static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
  else
    cblas_dgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N),
                static_cast<blasint>(K), alpha, a, static_cast<blasint>(lda), b,
                static_cast<blasint>(ldb), beta, c, static_cast<blasint>(ldc));
}

// OpenBLAS single-threaded for the lifetime of the guard. The attention tasks already run one
// per OpenMP thread; a threaded GEMM inside each would oversubscribe the cores, and fixing the
// BLAS thread count makes the tile results independent of how many threads there are.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas() : saved_(openblas_get_num_threads()) {
    if (saved_ != 1) openblas_set_num_threads(1);
  }
  ~SingleThreadedBlas() {
    if (saved_ != 1) openblas_set_num_threads(saved_);
  }
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int saved_;
};

// Same contract as attention_forward in kernels/attention.h; workspace as sized by
// attention_tiles_workspace(Tk), or null to allocate one. With packed documents (positions) a
// tile's GEMMs run over the keys from its first row's document start: the keys of earlier
// documents, which no row of the tile sees, are never multiplied.
template <typename T>
void attention_forward_tiles(T* out, T* lse, const T* q, const T* k, const T* v, std::int64_t B,
                             std::int64_t Tq, std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv,
                             std::int64_t hd, const std::int32_t* positions = nullptr,
                             T* workspace = nullptr, const AttentionStrides& strides = {}) {
  check_attention_shape(Tq, Tk, Hq, Hkv, hd, positions);
  std::vector<T> own;
  workspace = workspace_or_own(workspace, attention_tiles_workspace(Tk), own);
  const std::int64_t group = Hq / Hkv, offset = Tk - Tq;
  const AttentionStrides st = strides.resolved(Hq * hd, Hkv * hd);
  const std::int64_t tiles = (Tq + kAttentionTile - 1) / kAttentionTile;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const SingleThreadedBlas single;
#pragma omp parallel if (B * Hq * Tq * Tk * hd >= kMinParallelWork)
  {
    T* s = workspace + current_thread() * (2 * kAttentionTile * Tk + kAttentionTile);
#pragma omp for schedule(static)
    for (std::int64_t task = 0; task < B * Hq * tiles; ++task) {
      const std::int64_t tile = task % tiles, h = (task / tiles) % Hq, b = task / (tiles * Hq);
      const std::int64_t hk = h / group;
      const std::int64_t t0 = tile * kAttentionTile, rows = std::min(kAttentionTile, Tq - t0);
      const std::int64_t keys_end = t0 + rows + offset;  // the last row sees keys < keys_end
      const std::int64_t key0 = document_start(positions, b, Tq, t0);  // the first row's first
      const std::int64_t width = keys_end - key0;
      const T* q_tile = q + (b * Tq + t0) * st.q + h * hd;
      const T* kb = k + (b * Tk + key0) * st.k + hk * hd;
      const T* vb = v + (b * Tk + key0) * st.v + hk * hd;
      gemm_strided<T>(false, true, rows, width, hd, scale, q_tile, st.q, kb, st.k, T(0), s, width);
      for (std::int64_t r = 0; r < rows; ++r) {
        T* p = s + r * width;
        // This row's keys, as columns of the tile: [first, keys).
        const std::int64_t first = document_start(positions, b, Tq, t0 + r) - key0;
        const std::int64_t keys = t0 + r + offset + 1 - key0;
        T max = -std::numeric_limits<T>::infinity();
        for (std::int64_t j = first; j < keys; ++j) max = std::max(max, p[j]);
        exp_shifted(p + first, p + first, max, keys - first);
        T sum = 0;
        for (std::int64_t j = first; j < keys; ++j) sum += p[j];
        lse[(b * Hq + h) * Tq + t0 + r] = max + std::log(sum);
        const T inv = T(1) / sum;
        for (std::int64_t j = first; j < keys; ++j) p[j] *= inv;
        // Masked: the P V GEMM runs over the whole tile width.
        std::fill(p, p + first, T(0));
        std::fill(p + keys, p + width, T(0));
      }
      gemm_strided<T>(false, false, rows, hd, width, T(1), s, width, vb, st.v, T(0),
                      out + (b * Tq + t0) * st.out + h * hd, st.out);
    }
  }
}

// Same contract as attention_backward in kernels/attention.h (overwrites dq, dk, dv); packed
// documents narrow each tile's GEMMs as in the forward.
template <typename T>
void attention_backward_tiles(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse,
                              const T* q, const T* k, const T* v, std::int64_t B, std::int64_t Tq,
                              std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv, std::int64_t hd,
                              const std::int32_t* positions = nullptr, T* workspace = nullptr,
                              const AttentionStrides& strides = {}) {
  check_attention_shape(Tq, Tk, Hq, Hkv, hd, positions);
  std::vector<T> own;
  workspace = workspace_or_own(workspace, attention_tiles_workspace(Tk), own);
  const std::int64_t group = Hq / Hkv, offset = Tk - Tq;
  const AttentionStrides st = strides.resolved(Hq * hd, Hkv * hd);
  const std::int64_t tiles = (Tq + kAttentionTile - 1) / kAttentionTile;
  const T scale = T(1) / std::sqrt(static_cast<T>(hd));
  const SingleThreadedBlas single;
#pragma omp parallel if (B * Hq * Tq * Tk * hd >= kMinParallelWork)
  {
    T* p = workspace + current_thread() * (2 * kAttentionTile * Tk + kAttentionTile);
    T* ds = p + kAttentionTile * Tk;
    T* D = ds + kAttentionTile * Tk;
#pragma omp for schedule(static)
    for (std::int64_t task = 0; task < B * Hkv; ++task) {
      const std::int64_t hk = task % Hkv, b = task / Hkv;
      const std::int64_t kv_row0 = b * Tk;  // the batch's first key row
      for (std::int64_t j = 0; j < Tk; ++j) {
        std::fill_n(dk + (kv_row0 + j) * st.dk + hk * hd, hd, T(0));
        std::fill_n(dv + (kv_row0 + j) * st.dv + hk * hd, hd, T(0));
      }
      for (std::int64_t h = hk * group; h < (hk + 1) * group; ++h) {
        for (std::int64_t tile = 0; tile < tiles; ++tile) {
          const std::int64_t t0 = tile * kAttentionTile, rows = std::min(kAttentionTile, Tq - t0);
          const std::int64_t keys_end = t0 + rows + offset;
          const std::int64_t key0 = document_start(positions, b, Tq, t0);
          const std::int64_t width = keys_end - key0;
          const std::int64_t key_row = kv_row0 + key0;  // the tile's first key row
          const T* kb = k + key_row * st.k + hk * hd;
          const T* vb = v + key_row * st.v + hk * hd;
          const std::int64_t row0 = b * Tq + t0;
          const T* q_tile = q + row0 * st.q + h * hd;
          const T* do_tile = dout + row0 * st.dout + h * hd;
          const T* out_tile = out + row0 * st.out + h * hd;
          for (std::int64_t r = 0; r < rows; ++r)
            D[r] = dot(do_tile + r * st.dout, out_tile + r * st.out, hd);
          gemm_strided<T>(false, true, rows, width, hd, scale, q_tile, st.q, kb, st.k, T(0), p,
                          width);
          gemm_strided<T>(false, true, rows, width, hd, T(1), do_tile, st.dout, vb, st.v, T(0), ds,
                          width);
          for (std::int64_t r = 0; r < rows; ++r) {
            T* pr = p + r * width;
            T* dsr = ds + r * width;
            const std::int64_t first = document_start(positions, b, Tq, t0 + r) - key0;
            const std::int64_t keys = t0 + r + offset + 1 - key0;
            const T li = lse[(b * Hq + h) * Tq + t0 + r], Dr = D[r];
            exp_shifted(pr + first, pr + first, li, keys - first);
            for (std::int64_t j = first; j < keys; ++j) dsr[j] = pr[j] * (dsr[j] - Dr) * scale;
            std::fill(pr, pr + first, T(0));
            std::fill(dsr, dsr + first, T(0));
            std::fill(pr + keys, pr + width, T(0));
            std::fill(dsr + keys, dsr + width, T(0));
          }
          gemm_strided<T>(false, false, rows, hd, width, T(1), ds, width, kb, st.k, T(0),
                          dq + row0 * st.dq + h * hd, st.dq);
          gemm_strided<T>(true, false, width, hd, rows, T(1), p, width, do_tile, st.dout, T(1),
                          dv + key_row * st.dv + hk * hd, st.dv);
          gemm_strided<T>(true, false, width, hd, rows, T(1), ds, width, q_tile, st.q, T(1),
                          dk + key_row * st.dk + hk * hd, st.dk);
        }
      }
    }
  }
}

}  // namespace minitron::cpu
