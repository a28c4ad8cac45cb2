// Cross-entropy and KL references: losses against direct formulas in long double, gradients
// against central differences in double, ignored targets, temperature, identical logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/loss.h"
#include "tests/kernels/kernel_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using test::expect_gradient;
using test::random_vector;

// log(sum_j exp(x_j)) in long double, by the definition (inputs are O(10)).
long double direct_log_sum_exp(const double* x, std::int64_t V, long double scale = 1) {
  long double sum = 0;
  for (std::int64_t j = 0; j < V; ++j) sum += std::exp(static_cast<long double>(x[j]) * scale);
  return std::log(sum);
}

TEST(CrossEntropy, LossesGradientsAndIgnoredRows) {
  const std::int64_t rows = 4, V = 11;
  std::vector<double> logits = random_vector(rows * V, 100, -8, 8);
  const std::vector<std::int32_t> targets = {3, -1, 10, 0};
  const float grad_scale = 0.25f;

  std::vector<double> losses(rows, 99.0), work = logits;
  cpu::cross_entropy(losses.data(), work.data(), targets.data(), rows, V, 0.0f);
  EXPECT_EQ(work, logits);  // grad_scale 0: logits untouched
  for (std::int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) {
      EXPECT_EQ(losses[r], 0.0);
      continue;
    }
    const long double expected = direct_log_sum_exp(&logits[r * V], V) - logits[r * V + targets[r]];
    EXPECT_NEAR(losses[r], static_cast<double>(expected), 1e-13);  // double over 11 terms
  }

  std::vector<double> grad = logits;
  cpu::cross_entropy(losses.data(), grad.data(), targets.data(), rows, V, grad_scale);
  for (std::int64_t j = 0; j < V; ++j) EXPECT_EQ(grad[1 * V + j], 0.0);  // the ignored row
  expect_gradient("dlogits", logits, grad, [&] {
    std::vector<double> l(rows), x = logits;
    cpu::cross_entropy(l.data(), x.data(), targets.data(), rows, V, 0.0f);
    double total = 0;
    for (double v : l) total += grad_scale * v;
    return total;
  });
}

TEST(CrossEntropy, FloatSurvivesLargeLogitsAndRejectsBadTargets) {
  const std::int64_t V = 5;
  std::vector<float> logits = {1000.0f, 999.0f, -1000.0f, 0.0f, 998.0f};
  const std::vector<std::int32_t> target = {1};
  std::vector<float> loss(1);
  cpu::cross_entropy(loss.data(), logits.data(), target.data(), 1, V, 1.0f);
  // log(1 + e^-1 + e^-2) + 1, computed by hand; float rounding of O(1) values.
  EXPECT_NEAR(loss[0], std::log(1 + std::exp(-1.0) + std::exp(-2.0)) + 1.0, 1e-5);
  float sum = 0;
  for (float g : logits) sum += g;
  EXPECT_NEAR(sum, 0.0f, 1e-6);  // softmax - onehot sums to zero; float rounding

  const std::vector<std::int32_t> bad = {5};
  EXPECT_THROW(cpu::cross_entropy(loss.data(), logits.data(), bad.data(), 1, V, 0.0f), Error);
}

// sum_v p_t (log p_t - log p_s) with p = softmax(x / tau), from explicit probabilities.
long double direct_kl(const double* s, const double* t, std::int64_t V, double tau) {
  const long double lse_s = direct_log_sum_exp(s, V, 1.0L / tau);
  const long double lse_t = direct_log_sum_exp(t, V, 1.0L / tau);
  long double kl = 0;
  for (std::int64_t j = 0; j < V; ++j) {
    const long double pt = std::exp(t[j] / static_cast<long double>(tau) - lse_t);
    const long double ps = std::exp(s[j] / static_cast<long double>(tau) - lse_s);
    if (pt > 0) kl += pt * std::log(pt / ps);
  }
  return kl;
}

TEST(KlDivergence, MatchesDirectFormulaAndGradientWithTemperature) {
  const std::int64_t rows = 3, V = 9;
  const float tau = 2.5f, grad_scale = 0.5f;
  std::vector<double> student = random_vector(rows * V, 110, -5, 5);
  const std::vector<double> teacher = random_vector(rows * V, 111, -5, 5);
  std::vector<double> losses(rows), work = student;
  cpu::kl_divergence(losses.data(), work.data(), teacher.data(), rows, V, tau, 0.0f);
  EXPECT_EQ(work, student);
  for (std::int64_t r = 0; r < rows; ++r) {
    EXPECT_GT(losses[r], 0.0);
    // double log-softmax vs long double ratio form over 9 terms.
    EXPECT_NEAR(losses[r], static_cast<double>(direct_kl(&student[r * V], &teacher[r * V], V, tau)),
                1e-14);
  }

  std::vector<double> grad = student;
  cpu::kl_divergence(losses.data(), grad.data(), teacher.data(), rows, V, tau, grad_scale);
  expect_gradient("dstudent", student, grad, [&] {
    double total = 0;
    for (std::int64_t r = 0; r < rows; ++r)
      total +=
          grad_scale * static_cast<double>(direct_kl(&student[r * V], &teacher[r * V], V, tau));
    return total;
  });
}

TEST(KlDivergence, ZeroForIdenticalLogitsAndFiniteWithMaskedTeacher) {
  const std::int64_t V = 7;
  std::vector<double> s = random_vector(V, 120, -3, 3);
  const std::vector<double> t = s;
  std::vector<double> loss(1);
  cpu::kl_divergence(loss.data(), s.data(), t.data(), 1, V, 1.7f, 1.0f);
  EXPECT_NEAR(loss[0], 0.0, 1e-15);  // identical log-softmaxes cancel to rounding
  for (double g : s) EXPECT_NEAR(g, 0.0, 1e-15);

  // A teacher token with probability exactly 0 contributes 0 * log 0 = 0, not NaN.
  std::vector<float> student = {0.5f, -1.0f, 2.0f};
  const std::vector<float> teacher = {1.0f, -std::numeric_limits<float>::infinity(), 2.0f};
  std::vector<float> l(1);
  cpu::kl_divergence(l.data(), student.data(), teacher.data(), 1, 3, 1.0f, 1.0f);
  ASSERT_TRUE(std::isfinite(l[0]));
  const double lse_t = std::log(std::exp(1.0) + std::exp(2.0));
  const double lse_s = std::log(std::exp(0.5) + std::exp(-1.0) + std::exp(2.0));
  const double expected = std::exp(1.0 - lse_t) * ((1.0 - lse_t) - (0.5 - lse_s)) +
                          std::exp(2.0 - lse_t) * ((2.0 - lse_t) - (2.0 - lse_s));
  EXPECT_NEAR(l[0], expected, 1e-6);                      // float storage of an O(1) value
  EXPECT_NEAR(student[1], std::exp(-1.0 - lse_s), 1e-6);  // p_s - 0 for the masked token
}

}  // namespace
}  // namespace minitron
