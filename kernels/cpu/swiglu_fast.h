// SwiGLU for the CPU engine: the contracts of kernels/swiglu.h (which stays the reference),
// with exp(-gate) taken by the vectorized exp_affine, a block at a time into a local buffer so
// that outputs may alias inputs elementwise exactly as in the reference. The arithmetic after
// the exp is the reference's, in the same order. The strided forms (the fused gate|up
// projection: rows of `width` at row stride gate_up_stride, h and dh dense) run the same
// blocks within each row; exp_affine rounds every element alike wherever a block starts.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/cpu/exp.h"
#include "kernels/cpu/parallel.h"

namespace minitron::cpu {

inline constexpr std::int64_t kSwigluBlock = 256;

template <typename T>
void swiglu_forward_fast(T* h, const T* gate, const T* up, std::int64_t n);
template <typename T>
void swiglu_backward_fast(T* dgate, T* dup, const T* dh, const T* gate, const T* up,
                          std::int64_t n);

template <typename T>
void swiglu_forward_fast(T* h, const T* gate, const T* up, std::int64_t rows, std::int64_t width,
                         std::int64_t gate_up_stride) {
  if (rows == 1) return swiglu_forward_fast(h, gate, up, width);
#pragma omp parallel for schedule(static) if (rows * width >= kMinParallelWork)
  for (std::int64_t r = 0; r < rows; ++r)
    swiglu_forward_fast(h + r * width, gate + r * gate_up_stride, up + r * gate_up_stride, width);
}

template <typename T>
void swiglu_backward_fast(T* dgate, T* dup, const T* dh, const T* gate, const T* up,
                          std::int64_t rows, std::int64_t width, std::int64_t gate_up_stride) {
  if (rows == 1) return swiglu_backward_fast(dgate, dup, dh, gate, up, width);
#pragma omp parallel for schedule(static) if (rows * width >= kMinParallelWork)
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t at = r * gate_up_stride;
    swiglu_backward_fast(dgate + at, dup + at, dh + r * width, gate + at, up + at, width);
  }
}

template <typename T>
void swiglu_forward_fast(T* h, const T* gate, const T* up, std::int64_t n) {
  const std::int64_t blocks = (n + kSwigluBlock - 1) / kSwigluBlock;
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t i0 = blk * kSwigluBlock, m = std::min(kSwigluBlock, n - i0);
    T e[kSwigluBlock];
    exp_affine(e, gate + i0, T(-1), T(0), m);
    for (std::int64_t i = 0; i < m; ++i) {
      const T g = gate[i0 + i], s = T(1) / (T(1) + e[i]);
      h[i0 + i] = g * s * up[i0 + i];
    }
  }
}

template <typename T>
void swiglu_backward_fast(T* dgate, T* dup, const T* dh, const T* gate, const T* up,
                          std::int64_t n) {
  const std::int64_t blocks = (n + kSwigluBlock - 1) / kSwigluBlock;
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t i0 = blk * kSwigluBlock, m = std::min(kSwigluBlock, n - i0);
    T e[kSwigluBlock];
    exp_affine(e, gate + i0, T(-1), T(0), m);
    for (std::int64_t i = 0; i < m; ++i) {
      const T g = gate[i0 + i], s = T(1) / (T(1) + e[i]);
      const T d = dh[i0 + i];
      const T u = up[i0 + i];
      dgate[i0 + i] = d * u * s * (T(1) + g * (T(1) - s));
      dup[i0 + i] = d * g * s;
    }
  }
}

}  // namespace minitron::cpu
