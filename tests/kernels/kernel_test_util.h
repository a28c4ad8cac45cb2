// Helpers shared by the kernel tests: seeded random data and a central-difference gradient check.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace minitron::test {

inline std::vector<double> random_vector(std::size_t n, std::uint64_t seed, double lo = -1.0,
                                         double hi = 1.0) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& x : v) x = dist(rng);
  return v;
}

inline std::vector<float> to_float(const std::vector<double>& v) {
  return std::vector<float>(v.begin(), v.end());
}

// Checks grad == d loss / d x for every element of x by central differences in double.
// Step 1e-5: the truncation error is O(h^2 * f''') ~ 1e-10 for these O(1) functions, and the
// rounding error of the difference is ~1e-16 * |loss| / h ~ 1e-11, so the estimate is good to
// ~1e-9; the tolerance 1e-7 (relative to max(1, |grad|)) leaves a wide margin over that while
// still catching any wrong term (those show up at 1e-3 or more).
inline void expect_gradient(const std::string& what, std::vector<double>& x,
                            const std::vector<double>& grad, const std::function<double()>& loss,
                            double tolerance = 1e-7, double step = 1e-5) {
  ASSERT_EQ(x.size(), grad.size()) << what;
  int failures = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + step;
    const double plus = loss();
    x[i] = saved - step;
    const double minus = loss();
    x[i] = saved;
    const double numeric = (plus - minus) / (2 * step);
    const double bound = tolerance * std::max(1.0, std::abs(numeric));
    if (std::abs(numeric - grad[i]) > bound && ++failures <= 5)
      ADD_FAILURE() << what << "[" << i << "]: analytic " << grad[i] << ", numeric " << numeric;
  }
}

// sum_i w_i * y_i: turns an op with many outputs into one scalar loss whose gradient with
// respect to y is w (so w plays the part of dout).
inline double weighted_sum(const std::vector<double>& w, const std::vector<double>& y) {
  double s = 0;
  for (std::size_t i = 0; i < y.size(); ++i) s += w[i] * y[i];
  return s;
}

}  // namespace minitron::test
