// Embedding and RMSNorm references: forwards against plain loops, backwards against central
// differences in double, and the determinism of the embedding scatter.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/embedding.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/kernel_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using test::expect_gradient;
using test::random_vector;
using test::weighted_sum;

TEST(Embedding, ForwardCopiesRowsAndRejectsBadIds) {
  const std::int64_t vocab = 7, D = 5, N = 6;
  const std::vector<std::int32_t> tokens = {3, 0, 6, 3, 1, 3};
  const std::vector<double> table = random_vector(vocab * D, 1);
  std::vector<double> out(N * D);
  cpu::embedding_forward(out.data(), tokens.data(), table.data(), N, D, vocab);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < D; ++c) EXPECT_EQ(out[n * D + c], table[tokens[n] * D + c]);

  const std::vector<std::int32_t> bad = {2, 7};
  EXPECT_THROW(cpu::embedding_forward(out.data(), bad.data(), table.data(), 2, D, vocab), Error);
  const std::vector<std::int32_t> negative = {-1};
  EXPECT_THROW(cpu::embedding_forward(out.data(), negative.data(), table.data(), 1, D, vocab),
               Error);
}

TEST(Embedding, BackwardAccumulatesScatterMatchingFiniteDifferences) {
  const std::int64_t vocab = 5, D = 3, N = 7;
  const std::vector<std::int32_t> tokens = {4, 1, 4, 0, 4, 1, 2};
  std::vector<double> table = random_vector(vocab * D, 2);
  const std::vector<double> dout = random_vector(N * D, 3);
  const std::vector<double> initial = random_vector(vocab * D, 4);
  std::vector<double> dtable = initial;
  cpu::embedding_backward(dtable.data(), dout.data(), tokens.data(), N, D, vocab);
  std::vector<double> grad(vocab * D);
  for (std::size_t i = 0; i < grad.size(); ++i) grad[i] = dtable[i] - initial[i];
  std::vector<double> out(N * D);
  expect_gradient("dtable", table, grad, [&] {
    cpu::embedding_forward(out.data(), tokens.data(), table.data(), N, D, vocab);
    return weighted_sum(dout, out);
  });
}

TEST(Embedding, BackwardIsBitwiseDeterministicAcrossThreadCounts) {
  // Many repeats of few tokens in float: any change in summation order shows in the last bits.
  const std::int64_t vocab = 4, D = 300, N = 3000;
  std::vector<std::int32_t> tokens(N);
  for (std::int64_t n = 0; n < N; ++n)
    tokens[n] = static_cast<std::int32_t>((n * 7 + n / 3) % vocab);
  const std::vector<float> dout = test::to_float(random_vector(N * D, 5));

  // The order the reference promises: rows in order n for every element.
  std::vector<float> serial(vocab * D, 0.0f);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t c = 0; c < D; ++c) serial[tokens[n] * D + c] += dout[n * D + c];

  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2, 1, 2}) {
    omp_set_num_threads(threads);
    std::vector<float> dtable(vocab * D, 0.0f);
    cpu::embedding_backward(dtable.data(), dout.data(), tokens.data(), N, D, vocab);
    EXPECT_EQ(0, std::memcmp(dtable.data(), serial.data(), serial.size() * sizeof(float)))
        << "threads " << threads;
  }
  omp_set_num_threads(saved_threads);
}

// Independent double-precision RMSNorm: out = w * x / sqrt(mean(x^2) + eps).
std::vector<double> naive_rmsnorm(const std::vector<double>& x, const std::vector<double>& w,
                                  std::int64_t N, std::int64_t D, double eps,
                                  std::vector<double>* rstd = nullptr) {
  std::vector<double> y(N * D);
  for (std::int64_t n = 0; n < N; ++n) {
    double ms = 0;
    for (std::int64_t j = 0; j < D; ++j) ms += x[n * D + j] * x[n * D + j];
    ms /= static_cast<double>(D);
    const double r = 1.0 / std::sqrt(ms + eps);
    if (rstd) rstd->push_back(r);
    for (std::int64_t j = 0; j < D; ++j) y[n * D + j] = w[j] * x[n * D + j] * r;
  }
  return y;
}

TEST(RmsNorm, ForwardMatchesNaiveLoop) {
  const std::int64_t N = 5, D = 67;
  const float eps = 1e-5f;
  const std::vector<double> x = random_vector(N * D, 10, -2, 2);
  const std::vector<double> w = random_vector(D, 11, 0.5, 1.5);
  std::vector<double> expected_rstd;
  const std::vector<double> expected = naive_rmsnorm(x, w, N, D, eps, &expected_rstd);

  std::vector<double> out(N * D), rstd(N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, eps);
  for (std::int64_t n = 0; n < N; ++n)
    EXPECT_NEAR(rstd[n], expected_rstd[n], 1e-14);  // double, one short sum: ~1e-16 relative
  for (std::size_t i = 0; i < out.size(); ++i)
    EXPECT_NEAR(out[i], expected[i], 1e-14);  // double, O(1) values: a few ulps

  // float: the reference sums in double, so the result is within float rounding of the truth.
  const std::vector<float> xf = test::to_float(x), wf = test::to_float(w);
  std::vector<float> outf(N * D), rstdf(N);
  cpu::rmsnorm_forward(outf.data(), rstdf.data(), xf.data(), wf.data(), N, D, eps);
  const std::vector<double> exactf =
      naive_rmsnorm(std::vector<double>(xf.begin(), xf.end()),
                    std::vector<double>(wf.begin(), wf.end()), N, D, eps);
  for (std::size_t i = 0; i < outf.size(); ++i)
    EXPECT_NEAR(outf[i], exactf[i],
                4e-7 * std::max(1.0, std::abs(exactf[i])));  // 3 float roundings
}

TEST(RmsNorm, BackwardAccumulatesAndMatchesFiniteDifferences) {
  const std::int64_t N = 3, D = 13;
  const float eps = 1e-6f;
  std::vector<double> x = random_vector(N * D, 20, -2, 2);
  std::vector<double> w = random_vector(D, 21, 0.5, 1.5);
  const std::vector<double> dout = random_vector(N * D, 22);
  const std::vector<double> din0 = random_vector(N * D, 23), dw0 = random_vector(D, 24);

  std::vector<double> out(N * D), rstd(N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D, eps);
  std::vector<double> din = din0, dw = dw0;
  cpu::rmsnorm_backward(din.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, D);
  for (std::size_t i = 0; i < din.size(); ++i) din[i] -= din0[i];  // it must have accumulated
  for (std::size_t i = 0; i < dw.size(); ++i) dw[i] -= dw0[i];

  auto loss = [&] { return weighted_sum(dout, naive_rmsnorm(x, w, N, D, eps)); };
  expect_gradient("din", x, din, loss);
  expect_gradient("dweight", w, dw, loss);
}

}  // namespace
}  // namespace minitron
