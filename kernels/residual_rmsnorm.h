// Residual add fused with RMSNorm, CPU reference: where a block's output joins the residual
// stream and the next norm reads the stream straight away, one pass does both.
//
//   residual_out = residual + branch                       (rounded to T: the stored stream)
//   rstd = 1 / sqrt(mean(residual_out^2) + eps),  out = weight * round(residual_out * rstd)
//
// The norm reads the stored (rounded) residual_out, so the result is exactly that of the add
// followed by kernels/rmsnorm.h's rmsnorm_forward. `branch` may be the same array as
// `residual_out` (an in-place add into the branch's buffer): each element is read before it is
// written. Other overlaps are not allowed.
//
// Backward needs no op of its own: the add passes its output gradient unchanged to both inputs,
// and rmsnorm_backward already accumulates the norm's input gradient into the residual stream's
// gradient, which is then the gradient of residual and of branch alike.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace minitron::cpu {

template <typename T>
void residual_rmsnorm_forward(T* residual_out, T* out, T* rstd, const T* residual, const T* branch,
                              const T* weight, std::int64_t N, std::int64_t D, float eps) {
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n) {
    const T* x = residual + n * D;
    const T* b = branch + n * D;
    T* h = residual_out + n * D;
    double sum = 0;
    for (std::int64_t j = 0; j < D; ++j) {
      h[j] = static_cast<T>(x[j] + b[j]);
      sum += static_cast<double>(h[j]) * h[j];
    }
    const T r = static_cast<T>(1.0 / std::sqrt(sum / static_cast<double>(D) + eps));
    rstd[n] = r;
    T* y = out + n * D;
    for (std::int64_t j = 0; j < D; ++j) y[j] = weight[j] * static_cast<T>(h[j] * r);
  }
}

}  // namespace minitron::cpu
