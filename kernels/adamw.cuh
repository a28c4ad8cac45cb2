// AdamW with fp32 master weights and fp32 moments; the bf16 parameters are the rounded master.
// Step for step as torch.optim.AdamW (and kernels/adamw.h):
//
//   g = grad * grad_scale;  p = master * (1 - lr * wd)
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps),  step_size = lr / (1 - b1^t)
//
// The scalar bias corrections are computed on the host in double, as PyTorch does in Python,
// and passed in as floats. Elementwise and memory bound: a grid-stride loop.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cuda/device_common.cuh"
#include "model/backend.h"

namespace minitron::cuda {

struct AdamWScalars {
  float step_size, bias_correction2_sqrt, decay, beta1, beta2, one_minus_beta1, one_minus_beta2,
      epsilon, grad_scale;
};

inline AdamWScalars adamw_scalars(const AdamWStep& step) {
  MINITRON_ASSERT(step.step >= 1, "adamw: step ", step.step, " must be >= 1 (1-based)");
  const double b1 = step.beta1, b2 = step.beta2, t = static_cast<double>(step.step);
  AdamWScalars s;
  s.step_size = static_cast<float>(step.learning_rate / (1.0 - std::pow(b1, t)));
  s.bias_correction2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(b2, t)));
  s.decay = static_cast<float>(1.0 - static_cast<double>(step.learning_rate) * step.weight_decay);
  s.beta1 = static_cast<float>(b1);
  s.beta2 = static_cast<float>(b2);
  s.one_minus_beta1 = static_cast<float>(1.0 - b1);
  s.one_minus_beta2 = static_cast<float>(1.0 - b2);
  s.epsilon = step.epsilon;
  s.grad_scale = step.grad_scale;
  return s;
}

// ---- kernels ----

// master may be null: then params (fp32) is the master itself.
template <typename P, typename G>
__global__ void adamw_kernel(P* params, float* master, const G* grads, float* m, float* v,
                             std::int64_t n, AdamWScalars s) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const float g = to_float(grads[i]) * s.grad_scale;
    float p = (master ? master[i] : to_float(params[i])) * s.decay;
    const float mi = s.beta1 * m[i] + s.one_minus_beta1 * g;
    const float vi = s.beta2 * v[i] + s.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = sqrtf(vi) / s.bias_correction2_sqrt + s.epsilon;
    p = p - s.step_size * (mi / denom);
    if (master) master[i] = p;
    params[i] = from_float<P>(p);
  }
}

// ---- launchers ----

constexpr int kAdamWThreads = 256;

template <typename P, typename G>
void adamw_update(P* params, float* master, const G* grads, float* m, float* v, std::int64_t n,
                  const AdamWStep& step, cudaStream_t stream) {
  const AdamWScalars scalars = adamw_scalars(step);
  if (n <= 0) return;
  launch(adamw_kernel<P, G>, dim3(grid_for(n, kAdamWThreads)), dim3(kAdamWThreads), 0, stream,
         params, master, grads, m, v, n, scalars);
}

}  // namespace minitron::cuda
