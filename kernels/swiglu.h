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

template <typename T>
void swiglu_forward(T* h, const T* gate, const T* up, std::int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (std::int64_t i = 0; i < n; ++i) h[i] = gate[i] * sigmoid(gate[i]) * up[i];
}

// dgate = dh * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))), dup = dh * silu(g); both overwrite.
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dh, const T* gate, const T* up, std::int64_t n) {
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (std::int64_t i = 0; i < n; ++i) {
    const T g = gate[i], s = sigmoid(g);
    const T d = dh[i];
    dgate[i] = d * up[i] * s * (T(1) + g * (T(1) - s));
    dup[i] = d * g * s;
  }
}

}  // namespace minitron::cpu
