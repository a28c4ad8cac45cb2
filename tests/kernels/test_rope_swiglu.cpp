// RoPE and SwiGLU references: RoPE against an explicit complex rotation and as its own inverse;
// backwards against central differences in double.
#include <gtest/gtest.h>

#include <cmath>
#include <complex>
#include <cstdint>
#include <vector>

#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/kernels/kernel_test_util.h"

namespace minitron {
namespace {

using test::expect_gradient;
using test::random_vector;
using test::weighted_sum;

// transformers' default: inv_freq[i] = 1 / base^(2i / head_dim), computed in fp32.
std::vector<float> inverse_frequencies(std::int64_t head_dim, double base = 10000.0) {
  std::vector<float> f(head_dim / 2);
  for (std::int64_t i = 0; i < head_dim / 2; ++i)
    f[i] = static_cast<float>(1.0 / std::pow(base, static_cast<double>(2 * i) / head_dim));
  return f;
}

TEST(Rope, ForwardIsTheComplexRotationOfEachHalfPair) {
  const std::int64_t B = 2, T = 5, heads = 3, hd = 8, offset = 11;
  const std::vector<float> inv_freq = inverse_frequencies(hd);
  const std::vector<double> x = random_vector(B * T * heads * hd, 30);
  std::vector<double> y = x;
  cpu::rope_forward(y.data(), inv_freq.data(), B, T, heads, hd, offset);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < T; ++t)
      for (std::int64_t h = 0; h < heads; ++h)
        for (std::int64_t i = 0; i < hd / 2; ++i) {
          const std::int64_t base = (b * T + t) * heads * hd + h * hd;
          // The angle as transformers forms it: float(position) * inv_freq in fp32.
          const double angle = static_cast<float>(offset + t) * inv_freq[i];
          const std::complex<double> z(x[base + i], x[base + i + hd / 2]);
          const std::complex<double> r = z * std::polar(1.0, angle);
          EXPECT_NEAR(y[base + i], r.real(), 1e-15);  // double: two products, one sum
          EXPECT_NEAR(y[base + i + hd / 2], r.imag(), 1e-15);
        }
}

TEST(Rope, BackwardInvertsForwardAndMatchesFiniteDifferences) {
  const std::int64_t B = 2, T = 4, heads = 3, hd = 6, offset = 3;
  const std::vector<float> inv_freq = inverse_frequencies(hd);
  std::vector<double> x = random_vector(B * T * heads * hd, 31);
  std::vector<double> y = x;
  cpu::rope_forward(y.data(), inv_freq.data(), B, T, heads, hd, offset);
  cpu::rope_backward(y.data(), inv_freq.data(), B, T, heads, hd, offset);
  for (std::size_t i = 0; i < x.size(); ++i)
    EXPECT_NEAR(y[i], x[i], 1e-15);  // a rotation and its transpose in double: ulps

  const std::vector<double> dout = random_vector(x.size(), 32);
  std::vector<double> dx = dout;
  cpu::rope_backward(dx.data(), inv_freq.data(), B, T, heads, hd, offset);
  expect_gradient("dx", x, dx, [&] {
    std::vector<double> r = x;
    cpu::rope_forward(r.data(), inv_freq.data(), B, T, heads, hd, offset);
    return weighted_sum(dout, r);
  });
}

TEST(Rope, FloatAngleMatchesTransformersAtLargePositions) {
  // At position 100000 the fp32 product float(pos) * inv_freq differs from the double one by up
  // to ~4e-3 rad; the float engine must use the fp32 angle as transformers does.
  const std::int64_t hd = 4, position = 100000;
  const std::vector<float> inv_freq = {0.7f, 0.013f};
  std::vector<float> x = {1, 0, 0, 0};
  cpu::rope_forward(x.data(), inv_freq.data(), 1, 1, 1, hd, position);
  const float angle = static_cast<float>(position) * inv_freq[0];
  EXPECT_NEAR(x[0], std::cos(angle), 1e-6);  // float cos of the same float angle
  EXPECT_NEAR(x[2], std::sin(angle), 1e-6);
}

TEST(SwiGlu, ForwardAndBackward) {
  const std::int64_t n = 37;
  std::vector<double> g = random_vector(n, 40, -6, 6), u = random_vector(n, 41, -2, 2);
  std::vector<double> h(n);
  cpu::swiglu_forward(h.data(), g.data(), u.data(), n);
  for (std::int64_t i = 0; i < n; ++i)
    EXPECT_NEAR(h[i], g[i] / (1 + std::exp(-g[i])) * u[i], 1e-14);  // double, O(1): ulps

  const std::vector<double> dh = random_vector(n, 42);
  std::vector<double> dg(n), du(n);
  cpu::swiglu_backward(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);
  auto loss = [&] {
    std::vector<double> y(n);
    cpu::swiglu_forward(y.data(), g.data(), u.data(), n);
    return weighted_sum(dh, y);
  };
  expect_gradient("dgate", g, dg, loss);
  expect_gradient("dup", u, du, loss);
}

}  // namespace
}  // namespace minitron
