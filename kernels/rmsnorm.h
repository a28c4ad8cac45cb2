// RMSNorm (transformers' LlamaRMSNorm), CPU reference.
//
//   rstd = 1 / sqrt(mean(x^2) + eps),  out = weight * (x * rstd)
//
// The mean of squares is accumulated in double whatever T is: the reference should be at least
// as accurate as any kernel tested against it. The product x * rstd is rounded to T before the
// weight multiplies it, as transformers does (hidden_states.to(input_dtype) before weight *).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace minitron::cpu {

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* in, const T* weight, std::int64_t N, std::int64_t D,
                     float eps) {
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n) {
    const T* x = in + n * D;
    double sum = 0;
    for (std::int64_t j = 0; j < D; ++j) sum += static_cast<double>(x[j]) * x[j];
    const T r = static_cast<T>(1.0 / std::sqrt(sum / static_cast<double>(D) + eps));
    rstd[n] = r;
    T* y = out + n * D;
    for (std::int64_t j = 0; j < D; ++j) y[j] = weight[j] * static_cast<T>(x[j] * r);
  }
}

// With g_j = dout_j * weight_j and r = rstd:
//   din_j += r * g_j - r^3 / D * x_j * sum_i(g_i x_i)      (accumulates: residual stream)
//   dweight_j += sum_n dout_nj * (x_nj * r_n)               (accumulates: parameter gradient)
// dweight is summed over rows by column blocks, rows in order n, so it is deterministic.
template <typename T>
void rmsnorm_backward(T* din, T* dweight, const T* dout, const T* in, const T* weight,
                      const T* rstd, std::int64_t N, std::int64_t D) {
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n) {
    const T* x = in + n * D;
    const T* dy = dout + n * D;
    const double r = rstd[n];
    double dot = 0;
    for (std::int64_t j = 0; j < D; ++j) dot += static_cast<double>(dy[j]) * weight[j] * x[j];
    const double c = r * r * r * dot / static_cast<double>(D);
    T* dx = din + n * D;
    for (std::int64_t j = 0; j < D; ++j)
      dx[j] += static_cast<T>(r * (static_cast<double>(dy[j]) * weight[j]) - c * x[j]);
  }
  constexpr std::int64_t kColumnBlock = 64;
  const std::int64_t blocks = (D + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (N * D >= kMinParallelWork)
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t c0 = blk * kColumnBlock, c1 = std::min(D, c0 + kColumnBlock);
    double acc[kColumnBlock] = {};
    for (std::int64_t n = 0; n < N; ++n) {
      const T* x = in + n * D;
      const T* dy = dout + n * D;
      const T r = rstd[n];
      for (std::int64_t c = c0; c < c1; ++c)
        acc[c - c0] += static_cast<double>(dy[c]) * static_cast<T>(x[c] * r);
    }
    for (std::int64_t c = c0; c < c1; ++c) dweight[c] += static_cast<T>(acc[c - c0]);
  }
}

}  // namespace minitron::cpu
