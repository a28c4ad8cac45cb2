// AdamW, CPU reference, step for step as torch.optim.AdamW (single-tensor path):
//
//   g = grad * grad_scale
//   p *= 1 - lr * weight_decay            (decoupled decay, before the moments)
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//
// The bias corrections and step size are scalars computed in double, as PyTorch does in Python.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/backend.h"
#include "kernels/cpu/parallel.h"

namespace minitron::cpu {

template <typename T>
void adamw_update(T* params, const T* grads, T* m, T* v, std::int64_t n, const AdamWStep& step) {
  MINITRON_ASSERT(step.step >= 1, "adamw: step ", step.step, " must be >= 1 (1-based)");
  const double b1 = step.beta1, b2 = step.beta2;
  const double t = static_cast<double>(step.step);
  const T step_size = static_cast<T>(step.learning_rate / (1.0 - std::pow(b1, t)));
  const T bias_correction2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(b2, t)));
  const T decay = static_cast<T>(1.0 - static_cast<double>(step.learning_rate) * step.weight_decay);
  const T beta1 = static_cast<T>(b1), beta2 = static_cast<T>(b2);
  const T one_minus_beta1 = static_cast<T>(1.0 - b1), one_minus_beta2 = static_cast<T>(1.0 - b2);
  const T eps = static_cast<T>(step.epsilon), scale = static_cast<T>(step.grad_scale);
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (std::int64_t i = 0; i < n; ++i) {
    const T g = grads[i] * scale;
    T p = params[i] * decay;
    m[i] = beta1 * m[i] + one_minus_beta1 * g;
    v[i] = beta2 * v[i] + one_minus_beta2 * g * g;
    const T denom = std::sqrt(v[i]) / bias_correction2_sqrt + eps;
    params[i] = p - step_size * (m[i] / denom);
  }
}

}  // namespace minitron::cpu
