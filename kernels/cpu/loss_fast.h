// Cross-entropy for the CPU engine: the contract of cross_entropy in kernels/loss.h (which stays
// the reference the tests and the CUDA emulator compare against), with the exponentials taken
// by the vectorized exp_affine in T instead of std::exp in double. The row sum is still
// accumulated in double in index order, so only the rounding of each exp differs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/exp.h"
#include "kernels/cpu/parallel.h"
#include "kernels/loss.h"

namespace minitron::cpu {

template <typename T>
void cross_entropy_fast(T* losses, T* logits, const std::int32_t* targets, std::int64_t rows,
                        std::int64_t V, float grad_scale) {
  if (grad_scale == 0) {  // loss only: the reference, which leaves the logits untouched
    cross_entropy(losses, logits, targets, rows, V, grad_scale);
    return;
  }
  check_targets(targets, rows, V);
#pragma omp parallel for schedule(static) if (rows * V >= kMinParallelWork)
  for (std::int64_t r = 0; r < rows; ++r) {
    T* x = logits + r * V;
    const std::int32_t target = targets[r];
    if (target < 0) {
      losses[r] = 0;
      std::fill_n(x, V, T(0));
      continue;
    }
    const double x_target = x[target];
    T max = -std::numeric_limits<T>::infinity();
    for (std::int64_t i = 0; i < V; ++i) max = std::max(max, x[i]);
    exp_shifted(x, x, max, V);
    double sum = 0;
    for (std::int64_t i = 0; i < V; ++i) sum += static_cast<double>(x[i]);
    losses[r] = static_cast<T>(static_cast<double>(max) + std::log(sum) - x_target);
    const double factor = grad_scale / sum;
    for (std::int64_t i = 0; i < V; ++i) x[i] = static_cast<T>(factor * static_cast<double>(x[i]));
    x[target] -= static_cast<T>(grad_scale);
  }
}

}  // namespace minitron::cpu
