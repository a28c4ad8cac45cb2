// The CPU engine's fast paths beside the references: the vectorized exp against std::exp in
// double, and cross-entropy and SwiGLU (kernels/cpu/loss_fast.h, swiglu_fast.h) against
// kernels/loss.h and swiglu.h, which test_loss.cpp and test_rope_swiglu.cpp check
// independently.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/exp.h"
#include "kernels/cpu/loss_fast.h"
#include "kernels/cpu/swiglu_fast.h"
#include "kernels/loss.h"
#include "kernels/swiglu.h"
#include "tests/kernels/kernel_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using test::random_vector;

double ulps_from_exact(float actual, double exact) {
  const float rounded = static_cast<float>(exact);
  const double ulp = std::nextafter(rounded, std::numeric_limits<float>::infinity()) - rounded;
  return std::abs(static_cast<double>(actual) - exact) / ulp;
}

TEST(CpuExp, IsWithinOneUlpOverTheNormalRange) {
  std::vector<float> x;
  for (float v = -87.3f; v < 88.7f; v += 0.000731f) x.push_back(v);
  std::vector<float> y(x.size());
  cpu::exp_affine(y.data(), x.data(), 1.0f, 0.0f, static_cast<std::int64_t>(x.size()));
  double worst = 0;
  for (std::size_t i = 0; i < x.size(); ++i)
    worst = std::max(worst, ulps_from_exact(y[i], std::exp(static_cast<double>(x[i]))));
  // std::exp itself is within 1 ulp of the exact value; the Cephes polynomial keeps to that
  // bound too (0.95 ulp at worst over this sweep), so 1 ulp is the claim tested.
  EXPECT_LE(worst, 1.0);
}

TEST(CpuExp, SpecialValuesTailsAndAliasing) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {-inf, inf, std::nanf(""), -100.0f, 100.0f, 0.0f, 1.0f};  // 7: a tail
  std::vector<float> y(x.size());
  cpu::exp_affine(y.data(), x.data(), 1.0f, 0.0f, 7);
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], inf);
  EXPECT_TRUE(std::isnan(y[2]));
  EXPECT_EQ(y[3], 0.0f);  // exp(-100) is below the smallest normal float
  EXPECT_EQ(y[4], inf);
  EXPECT_EQ(y[5], 1.0f);
  EXPECT_LE(ulps_from_exact(y[6], std::exp(1.0)), 1.0);  // the same bound as above
  // In place, negated and shifted: exp(-x - 1) for x = -1 is exactly 1.
  std::vector<float> z = {-1.0f, -1.0f, -1.0f, -1.0f, -1.0f};
  cpu::exp_affine(z.data(), z.data(), -1.0f, 1.0f, 5);
  for (float v : z) EXPECT_EQ(v, 1.0f);
}

// Float: each gradient element is grad_scale * p rounded once, from an exp within 1 ulp and a
// double sum, so it differs from the reference by a few float ulps; 1e-6 relative to
// max(1e-3, |x|) (grad_scale is 1e-3 here) covers that with room. The loss is a double
// log-sum of the same values: 1e-6 relative.
TEST(CrossEntropyFast, MatchesReference) {
  const std::int64_t rows = 5, V = 1000;
  std::vector<float> logits = test::to_float(random_vector(rows * V, 40, -8, 8));
  std::vector<std::int32_t> targets = {3, -1, 999, 0, 512};
  std::vector<float> ref = logits, fast = logits, ref_loss(rows), fast_loss(rows);
  cpu::cross_entropy(ref_loss.data(), ref.data(), targets.data(), rows, V, 1e-3f);
  cpu::cross_entropy_fast(fast_loss.data(), fast.data(), targets.data(), rows, V, 1e-3f);
  for (std::int64_t r = 0; r < rows; ++r)
    EXPECT_NEAR(fast_loss[r], ref_loss[r], 1e-6 * std::max(1.0f, std::abs(ref_loss[r]))) << r;
  int failures = 0;
  for (std::size_t i = 0; i < ref.size(); ++i)
    if (!(std::abs(fast[i] - ref[i]) <= 1e-6 * std::max(1e-3f, std::abs(ref[i]))) &&
        ++failures <= 5)
      ADD_FAILURE() << "dlogits[" << i << "]: reference " << ref[i] << ", fast " << fast[i];
  // The ignored row's gradient is exactly zero, as in the reference.
  for (std::int64_t i = V; i < 2 * V; ++i) ASSERT_EQ(fast[i], 0.0f);
}

TEST(CrossEntropyFast, LossOnlyLeavesLogitsAndRejectsBadTargets) {
  const std::int64_t rows = 2, V = 50;
  std::vector<float> logits = test::to_float(random_vector(rows * V, 41, -3, 3));
  const std::vector<float> saved = logits;
  std::vector<std::int32_t> targets = {1, 2};
  std::vector<float> loss(rows), ref_loss(rows);
  cpu::cross_entropy_fast(loss.data(), logits.data(), targets.data(), rows, V, 0.0f);
  EXPECT_EQ(0, std::memcmp(saved.data(), logits.data(), saved.size() * sizeof(float)));
  cpu::cross_entropy(ref_loss.data(), logits.data(), targets.data(), rows, V, 0.0f);
  EXPECT_EQ(loss, ref_loss);
  targets[1] = static_cast<std::int32_t>(V);
  EXPECT_THROW(cpu::cross_entropy_fast(loss.data(), logits.data(), targets.data(), rows, V, 1.0f),
               Error);
}

TEST(SwigluFast, MatchesReference) {
  const std::int64_t n = 1000;  // several blocks and a partial one
  const std::vector<double> gate = random_vector(n, 50, -12, 12), up = random_vector(n, 51);
  const std::vector<double> dh = random_vector(n, 52);
  // Double: the fast path's exp is std::exp of the same argument, so results are identical.
  {
    std::vector<double> h1(n), h2(n), dg1(n), dg2(n), du1(n), du2(n);
    cpu::swiglu_forward(h1.data(), gate.data(), up.data(), n);
    cpu::swiglu_forward_fast(h2.data(), gate.data(), up.data(), n);
    cpu::swiglu_backward(dg1.data(), du1.data(), dh.data(), gate.data(), up.data(), n);
    cpu::swiglu_backward_fast(dg2.data(), du2.data(), dh.data(), gate.data(), up.data(), n);
    EXPECT_EQ(h1, h2);
    EXPECT_EQ(dg1, dg2);
    EXPECT_EQ(du1, du2);
  }
  // Float: one exp differing by at most 1 ulp, propagated through a few float operations
  // (sigmoid's derivative amplifies it at most ~2x): 1e-6 relative to max(1, |value|).
  const std::vector<float> gf = test::to_float(gate), uf = test::to_float(up);
  const std::vector<float> df = test::to_float(dh);
  std::vector<float> h1(n), h2(n), dg1(n), dg2(n), du1(n), du2(n);
  cpu::swiglu_forward(h1.data(), gf.data(), uf.data(), n);
  cpu::swiglu_forward_fast(h2.data(), gf.data(), uf.data(), n);
  cpu::swiglu_backward(dg1.data(), du1.data(), df.data(), gf.data(), uf.data(), n);
  cpu::swiglu_backward_fast(dg2.data(), du2.data(), df.data(), gf.data(), uf.data(), n);
  for (std::int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(h2[i], h1[i], 1e-6 * std::max(1.0f, std::abs(h1[i]))) << i;
    EXPECT_NEAR(dg2[i], dg1[i], 1e-6 * std::max(1.0f, std::abs(dg1[i]))) << i;
    EXPECT_NEAR(du2[i], du1[i], 1e-6 * std::max(1.0f, std::abs(du1[i]))) << i;
  }
}

}  // namespace
}  // namespace minitron
