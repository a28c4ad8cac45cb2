// Per-row losses over a chunk of logits [rows, V], CPU reference: cross-entropy and the
// forward KL divergence used for distillation. Sums over the vocabulary are taken in double
// (V is up to ~131k), in index order.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/parallel.h"
#include "util/error.h"

namespace minitron::cpu {

// max and log(sum(exp(x / tau - max))) + max over one row, with the sum in double.
template <typename T>
double log_sum_exp(const T* x, std::int64_t V, double inv_tau = 1.0) {
  double max = -std::numeric_limits<double>::infinity();
  for (std::int64_t i = 0; i < V; ++i) max = std::max(max, static_cast<double>(x[i]) * inv_tau);
  double sum = 0;
  for (std::int64_t i = 0; i < V; ++i) sum += std::exp(static_cast<double>(x[i]) * inv_tau - max);
  return max + std::log(sum);
}

// Every target a vocabulary id or negative (an ignored row), checked before any row is touched.
inline void check_targets(const std::int32_t* targets, std::int64_t rows, std::int64_t V) {
  for (std::int64_t r = 0; r < rows; ++r) {
    if (targets[r] >= V)
      fail_expected(str("target ", targets[r], " of row ", r), "outside the vocabulary",
                    str("a negative id (ignored) or 0 <= id < ", V));
  }
}

// losses[r] = logsumexp(logits[r]) - logits[r, targets[r]]; a negative target ignores the row
// (loss 0, gradient 0). When grad_scale != 0, logits[r] <- grad_scale * (softmax - onehot).
template <typename T>
void cross_entropy(T* losses, T* logits, const std::int32_t* targets, std::int64_t rows,
                   std::int64_t V, float grad_scale) {
  check_targets(targets, rows, V);
#pragma omp parallel for schedule(static) if (rows * V >= kMinParallelWork)
  for (std::int64_t r = 0; r < rows; ++r) {
    T* x = logits + r * V;
    const std::int32_t target = targets[r];
    if (target < 0) {
      losses[r] = 0;
      if (grad_scale != 0) std::fill_n(x, V, T(0));
      continue;
    }
    if (grad_scale == 0) {
      losses[r] = static_cast<T>(log_sum_exp(x, V) - static_cast<double>(x[target]));
      continue;
    }
    // With a gradient to write, each exp is taken once and parked in the row it will replace
    // (one extra rounding to T of a value the gradient is rounded to anyway).
    const double x_target = x[target];
    double max = -std::numeric_limits<double>::infinity();
    for (std::int64_t i = 0; i < V; ++i) max = std::max(max, static_cast<double>(x[i]));
    double sum = 0;
    for (std::int64_t i = 0; i < V; ++i) {
      const double e = std::exp(static_cast<double>(x[i]) - max);
      sum += e;
      x[i] = static_cast<T>(e);
    }
    losses[r] = static_cast<T>(max + std::log(sum) - x_target);
    const double factor = grad_scale / sum;
    for (std::int64_t i = 0; i < V; ++i) x[i] = static_cast<T>(factor * static_cast<double>(x[i]));
    x[target] -= static_cast<T>(grad_scale);
  }
}

// losses[r] = sum_v p_t (log p_t - log p_s), p = softmax(logits / tau), log-softmax throughout
// and 0 * log 0 = 0. When grad_scale != 0, student[r] <- grad_scale * (p_s - p_t) / tau.
template <typename T>
void kl_divergence(T* losses, T* student, const T* teacher, std::int64_t rows, std::int64_t V,
                   float temperature, float grad_scale) {
  MINITRON_ASSERT(temperature > 0, "kl_divergence: temperature ", temperature, " must be > 0");
  const double inv_tau = 1.0 / static_cast<double>(temperature);
#pragma omp parallel for schedule(static) if (rows * V >= kMinParallelWork)
  for (std::int64_t r = 0; r < rows; ++r) {
    T* s = student + r * V;
    const T* t = teacher + r * V;
    const double lse_s = log_sum_exp(s, V, inv_tau);
    const double lse_t = log_sum_exp(t, V, inv_tau);
    const double scale = static_cast<double>(grad_scale) * inv_tau;
    double loss = 0;
    for (std::int64_t i = 0; i < V; ++i) {
      const double log_pt = static_cast<double>(t[i]) * inv_tau - lse_t;
      const double log_ps = static_cast<double>(s[i]) * inv_tau - lse_s;
      const double pt = std::exp(log_pt);
      if (pt > 0) loss += pt * (log_pt - log_ps);
      if (grad_scale != 0) s[i] = static_cast<T>(scale * (std::exp(log_ps) - pt));
    }
    losses[r] = static_cast<T>(loss);
  }
}

}  // namespace minitron::cpu
