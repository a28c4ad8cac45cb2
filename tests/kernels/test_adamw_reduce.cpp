// AdamW against torch.optim.AdamW's update written out in the test, and the reductions against
// plain loops, with the determinism of sum_of_squares across thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/reduce.h"
#include "tests/kernels/kernel_test_util.h"

namespace minitron {
namespace {

using test::random_vector;

TEST(AdamW, ThreeStepsMatchTorchClosedForm) {
  const std::int64_t n = 29;
  AdamWStep s;
  s.learning_rate = 1e-2f;
  s.beta1 = 0.9f;
  s.beta2 = 0.95f;
  s.epsilon = 1e-8f;
  s.weight_decay = 0.1f;
  s.grad_scale = 0.5f;
  const std::vector<double> p0 = random_vector(n, 130);

  // torch.optim.AdamW, one element at a time, in double (the spelling of torch's
  // _single_tensor_adamw).
  std::vector<double> p = p0, m(n, 0.0), v(n, 0.0);
  std::vector<float> pf = test::to_float(p0), mf(n, 0.0f), vf(n, 0.0f);
  std::vector<double> pd = p0, md(n, 0.0), vd(n, 0.0);
  for (std::int64_t t = 1; t <= 3; ++t) {
    const std::vector<double> grad = random_vector(n, 140 + t, -3, 3);
    for (std::int64_t i = 0; i < n; ++i) {
      const double g = grad[i] * s.grad_scale;
      const double lr = s.learning_rate, b1 = s.beta1, b2 = s.beta2;
      p[i] *= 1 - lr * s.weight_decay;
      m[i] = m[i] * b1 + (1 - b1) * g;
      v[i] = v[i] * b2 + (1 - b2) * g * g;
      const double bias_correction1 = 1 - std::pow(b1, t);
      const double bias_correction2 = 1 - std::pow(b2, t);
      const double denom = std::sqrt(v[i]) / std::sqrt(bias_correction2) + s.epsilon;
      p[i] -= lr / bias_correction1 * m[i] / denom;
    }
    s.step = t;
    cpu::adamw_update(pd.data(), grad.data(), md.data(), vd.data(), n, s);
    const std::vector<float> gf = test::to_float(grad);
    cpu::adamw_update(pf.data(), gf.data(), mf.data(), vf.data(), n, s);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(pd[i], p[i], 1e-15);  // double, same operations: ulps of O(1) values
    EXPECT_NEAR(md[i], m[i], 1e-15);
    EXPECT_NEAR(vd[i], v[i], 1e-15);
    // float: a handful of roundings on O(1) params; the step itself is ~lr = 1e-2.
    EXPECT_NEAR(pf[i], p[i], 1e-6);
  }
}

TEST(AdamW, ZeroGradientOnlyDecays) {
  AdamWStep s;
  s.learning_rate = 0.1f;
  s.weight_decay = 0.5f;
  s.step = 1;
  std::vector<double> p = {2.0, -4.0}, g = {0.0, 0.0}, m = {0.0, 0.0}, v = {0.0, 0.0};
  cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), 2, s);
  const double decay = 1 - static_cast<double>(s.learning_rate) * s.weight_decay;
  EXPECT_DOUBLE_EQ(p[0], 2.0 * decay);
  EXPECT_DOUBLE_EQ(p[1], -4.0 * decay);
}

TEST(SumOfSquares, MatchesLongDoubleAndIsBitwiseDeterministic) {
  const std::int64_t n = 100003;  // several blocks, above the parallel threshold, ragged end
  const std::vector<float> x = test::to_float(random_vector(n, 150, -10, 10));
  long double expected = 0;
  for (float value : x) expected += static_cast<long double>(value) * value;
  const double first = cpu::sum_of_squares(x.data(), n);
  // double sums of 1e5 positive terms: relative error <= 1e5 * 2^-53 ~ 1e-11.
  EXPECT_NEAR(first, static_cast<double>(expected), 1e-11 * static_cast<double>(expected));

  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2, 1, 2}) {
    omp_set_num_threads(threads);
    const double again = cpu::sum_of_squares(x.data(), n);
    EXPECT_EQ(std::memcmp(&again, &first, sizeof(double)), 0) << "threads " << threads;
  }
  omp_set_num_threads(saved_threads);
  EXPECT_EQ(cpu::sum_of_squares(x.data(), 0), 0.0);
}

TEST(ReduceOverSequence, MeanL2AndVariance) {
  const std::int64_t B = 3, T = 7, C = 70;  // C spans two column blocks
  const std::vector<double> act = random_vector(B * T * C, 160, -3, 3);
  for (SequenceReduction reduction :
       {SequenceReduction::Mean, SequenceReduction::L2, SequenceReduction::Variance}) {
    std::vector<double> out(B * C);
    cpu::reduce_over_sequence(out.data(), act.data(), B, T, C, reduction);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t c = 0; c < C; ++c) {
        double sum = 0, sum_abs = 0, sum_sq = 0;
        for (std::int64_t t = 0; t < T; ++t) {
          const double x = act[(b * T + t) * C + c];
          sum += x;
          sum_abs += std::abs(x);
          sum_sq += x * x;
        }
        const double mean = sum / T;
        const double expected = reduction == SequenceReduction::Mean ? sum_abs / T
                                : reduction == SequenceReduction::L2 ? std::sqrt(sum_sq)
                                                                     : sum_sq / T - mean * mean;
        EXPECT_NEAR(out[b * C + c], expected, 1e-13);  // double over 7 terms of O(1)
      }
  }
}

TEST(RowCosine, KnownAnglesAndZeroRows) {
  const std::int64_t C = 3;
  const std::vector<double> a = {1, 0, 0, 1, 2, 3, 0, 0, 0, 1, 1, 0};
  const std::vector<double> b = {0, 5, 0, 2, 4, 6, 1, 2, 3, -1, -1, 0};
  std::vector<double> out(4);
  cpu::row_cosine(out.data(), a.data(), b.data(), 4, C);
  EXPECT_NEAR(out[0], 0.0, 1e-15);   // orthogonal
  EXPECT_NEAR(out[1], 1.0, 1e-15);   // parallel
  EXPECT_EQ(out[2], 0.0);            // a zero row: defined as 0
  EXPECT_NEAR(out[3], -1.0, 1e-15);  // opposite
}

}  // namespace
}  // namespace minitron
