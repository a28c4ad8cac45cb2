// SwiGLU gating, CPU reference: h = silu(gate) * up, silu(g) = g * sigmoid(g).
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace minitron::cpu {

template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

// With width > 0 the n elements are rows of `width`, gate and up (dgate and dup) at row stride
// gate_up_stride (the fused gate|up projection); h and dh are dense.
template <typename T>
void swiglu_forward(T* h, const T* gate, const T* up, std::int64_t n, std::int64_t width = 0,
                    std::int64_t gate_up_stride = 0) {
  if (width == 0) width = gate_up_stride = n;
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t j = i / width * gate_up_stride + i % width;
    h[i] = gate[j] * sigmoid(gate[j]) * up[j];
  }
}

// dgate = dh * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))), dup = dh * silu(g); both overwrite.
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dh, const T* gate, const T* up, std::int64_t n,
                     std::int64_t width = 0, std::int64_t gate_up_stride = 0) {
  if (width == 0) width = gate_up_stride = n;
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t j = i / width * gate_up_stride + i % width;
    const T g = gate[j], s = sigmoid(g);
    const T d = dh[i];
    dgate[j] = d * up[j] * s * (T(1) + g * (T(1) - s));
    dup[j] = d * g * s;
  }
}

}  // namespace minitron::cpu
