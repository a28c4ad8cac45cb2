// AdamW with fp32 master weights and fp32 moments; the bf16 parameters are the rounded master.
// Step for step as torch.optim.AdamW (and kernels/adamw.h):
//
//   g = grad * grad_scale;  p = master * (1 - lr * wd)
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= step_size * m / (sqrt(v) / sqrt(1 - b2^t) + eps),  step_size = lr / (1 - b1^t)
//
// The scalar bias corrections are computed on the host in double, as PyTorch does in Python,
// and passed in as floats. Elementwise and memory bound: a grid-stride loop over 16-byte packs
// (kernels/packed.cuh) when every pointer is 16-byte aligned, element by element otherwise.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/backend.h"
#include "kernels/cuda/device_common.cuh"
#include "kernels/packed.cuh"

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

// One element's step; p is the decayed-to-be master value, returns the new master.
__device__ __forceinline__ float adamw_element(float p, float grad, float& m, float& v,
                                               const AdamWScalars& s) {
  const float g = grad * s.grad_scale;
  p *= s.decay;
  m = s.beta1 * m + s.one_minus_beta1 * g;
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  const float denom = sqrtf(v) / s.bias_correction2_sqrt + s.epsilon;
  return p - s.step_size * (m / denom);
}

// master may be null: then params (fp32) is the master itself.
template <typename P, typename G, bool kVector>
__global__ void adamw_kernel(P* params, float* master, const G* grads, float* m, float* v,
                             std::int64_t n, AdamWScalars s) {
  const std::int64_t start = grid_start(), stride = grid_stride();
  std::int64_t done = 0;
  if constexpr (kVector) {
    constexpr int K = pack_elements<P, G, float>();
    const std::int64_t packs = n / K;
    for (std::int64_t q = start; q < packs; q += stride) {
      const std::int64_t i = q * K;
      float p[K], g[K], mi[K], vi[K];
      if (master)
        load_floats(p, master + i);
      else
        load_floats(p, params + i);
      load_floats(g, grads + i);
      load_floats(mi, m + i);
      load_floats(vi, v + i);
#pragma unroll
      for (int e = 0; e < K; ++e) p[e] = adamw_element(p[e], g[e], mi[e], vi[e], s);
      store_floats(m + i, mi);
      store_floats(v + i, vi);
      if (master) store_floats(master + i, p);
      store_floats(params + i, p);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + start; i < n; i += stride) {
    float mi = m[i], vi = v[i];
    const float p =
        adamw_element(master ? master[i] : to_float(params[i]), to_float(grads[i]), mi, vi, s);
    m[i] = mi;
    v[i] = vi;
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
  if (aligned16(params) && aligned16(master) && aligned16(grads) && aligned16(m) && aligned16(v))
    launch(adamw_kernel<P, G, true>,
           dim3(grid_for(ceil_div(n, pack_elements<P, G, float>()), kAdamWThreads)),
           dim3(kAdamWThreads), 0, stream, params, master, grads, m, v, n, scalars);
  else
    launch(adamw_kernel<P, G, false>, dim3(grid_for(n, kAdamWThreads)), dim3(kAdamWThreads), 0,
           stream, params, master, grads, m, v, n, scalars);
}

}  // namespace minitron::cuda
