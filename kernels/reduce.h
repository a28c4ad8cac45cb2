// Reductions, CPU reference: the gradient norm's sum of squares, the importance observers'
// per-channel statistics over a sequence, and the per-row cosine of Block Importance.
// Every sum has a fixed order independent of the thread count.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/backend.h"
#include "kernels/cpu/parallel.h"
#include "util/error.h"

namespace minitron::cpu {

// Fixed-size blocks, each summed in order in double, then the block sums added in order.
template <typename T>
double sum_of_squares(const T* x, std::int64_t n) {
  constexpr std::int64_t kBlock = 1 << 14;
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(static_cast<std::size_t>(blocks));
#pragma omp parallel for schedule(static) if (n >= kMinParallelWork)
  for (std::int64_t blk = 0; blk < blocks; ++blk) {
    const std::int64_t i1 = std::min(n, (blk + 1) * kBlock);
    double sum = 0;
    for (std::int64_t i = blk * kBlock; i < i1; ++i) sum += static_cast<double>(x[i]) * x[i];
    partial[blk] = sum;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

// out [B, C]: for each sample b and channel c, the reduction over t of act[(b*T + t), c].
// Variance is the population variance, computed in two passes (mean, then squared deviations).
template <typename T>
void reduce_over_sequence(T* out, const T* act, std::int64_t B, std::int64_t T_, std::int64_t C,
                          SequenceReduction reduction) {
  MINITRON_ASSERT(T_ > 0, "reduce_over_sequence: empty sequence");
  constexpr std::int64_t kColumnBlock = 64;
  const std::int64_t blocks = (C + kColumnBlock - 1) / kColumnBlock;
#pragma omp parallel for schedule(static) if (B * T_ * C >= kMinParallelWork)
  for (std::int64_t task = 0; task < B * blocks; ++task) {
    const std::int64_t b = task / blocks, blk = task % blocks;
    const std::int64_t c0 = blk * kColumnBlock, c1 = std::min(C, c0 + kColumnBlock);
    const T* base = act + b * T_ * C;
    double acc[kColumnBlock] = {};
    double mean[kColumnBlock] = {};
    for (std::int64_t t = 0; t < T_; ++t) {
      const T* row = base + t * C;
      for (std::int64_t c = c0; c < c1; ++c) {
        const double x = row[c];
        if (reduction == SequenceReduction::Mean)
          acc[c - c0] += std::abs(x);
        else if (reduction == SequenceReduction::L2)
          acc[c - c0] += x * x;
        else
          mean[c - c0] += x;
      }
    }
    if (reduction == SequenceReduction::Variance) {
      for (std::int64_t c = c0; c < c1; ++c) mean[c - c0] /= static_cast<double>(T_);
      for (std::int64_t t = 0; t < T_; ++t) {
        const T* row = base + t * C;
        for (std::int64_t c = c0; c < c1; ++c) {
          const double d = row[c] - mean[c - c0];
          acc[c - c0] += d * d;
        }
      }
    }
    for (std::int64_t c = c0; c < c1; ++c) {
      const double a = acc[c - c0];
      double value = 0;
      switch (reduction) {
        case SequenceReduction::Mean: value = a / static_cast<double>(T_); break;
        case SequenceReduction::L2: value = std::sqrt(a); break;
        case SequenceReduction::Variance: value = a / static_cast<double>(T_); break;
      }
      out[b * C + c] = static_cast<T>(value);
    }
  }
}

// out[r] = a[r].b[r] / (|a[r]| |b[r]|), or 0 when either row is all zeros.
template <typename T>
void row_cosine(T* out, const T* a, const T* b, std::int64_t rows, std::int64_t C) {
#pragma omp parallel for schedule(static) if (rows * C >= kMinParallelWork)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* x = a + r * C;
    const T* y = b + r * C;
    double xy = 0, xx = 0, yy = 0;
    for (std::int64_t c = 0; c < C; ++c) {
      xy += static_cast<double>(x[c]) * y[c];
      xx += static_cast<double>(x[c]) * x[c];
      yy += static_cast<double>(y[c]) * y[c];
    }
    out[r] = (xx == 0 || yy == 0) ? T(0) : static_cast<T>(xy / (std::sqrt(xx) * std::sqrt(yy)));
  }
}

}  // namespace minitron::cpu
