// The residual add fused with RMSNorm (kernels/residual_rmsnorm.h) against the plain composition
// (an add, then kernels/rmsnorm.h's rmsnorm_forward, itself tested against a naive loop), its
// documented backward (rmsnorm_backward into the stream's gradient) against finite differences,
// and the CPU engine's Backend method against the engine's own add + norm.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/residual_rmsnorm.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/kernel_test_util.h"

namespace minitron {
namespace {

using test::random_vector;

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
void expect_same_as_composition(std::int64_t N, std::int64_t D) {
  const float eps = 1e-5f;
  const auto x = cast<T>(random_vector(N * D, 70 + N, -2, 2));
  const auto b = cast<T>(random_vector(N * D, 71 + N, -1, 1));
  const auto w = cast<T>(random_vector(D, 72, 0.5, 1.5));
  std::vector<T> h(N * D), out(N * D), rstd(N);
  cpu::residual_rmsnorm_forward(h.data(), out.data(), rstd.data(), x.data(), b.data(), w.data(), N,
                                D, eps);

  std::vector<T> want_h(N * D), want_out(N * D), want_rstd(N);
  for (std::int64_t i = 0; i < N * D; ++i) want_h[i] = x[i] + b[i];
  cpu::rmsnorm_forward(want_out.data(), want_rstd.data(), want_h.data(), w.data(), N, D, eps);
  // The same operations in the same order: identical bits.
  EXPECT_EQ(h, want_h);
  EXPECT_EQ(out, want_out);
  EXPECT_EQ(rstd, want_rstd);

  // In place into the branch's array.
  std::vector<T> inplace = b, out2(N * D, T(-7)), rstd2(N);
  cpu::residual_rmsnorm_forward(inplace.data(), out2.data(), rstd2.data(), x.data(), inplace.data(),
                                w.data(), N, D, eps);
  EXPECT_EQ(inplace, want_h);
  EXPECT_EQ(out2, want_out);
}

TEST(ResidualRmsNorm, ForwardIsTheAddThenTheNorm) {
  expect_same_as_composition<double>(5, 13);
  expect_same_as_composition<float>(1, 31);
  // Enough work to take the OpenMP path (kMinParallelWork elements).
  expect_same_as_composition<float>(300, 130);
}

// The documented backward: for a loss of both outputs, d/d(residual) = d/d(branch) =
// dloss/d(residual_out) + the norm's input gradient, which is what rmsnorm_backward adds into a
// gradient that holds dloss/d(residual_out).
TEST(ResidualRmsNorm, BackwardIsRmsNormBackwardIntoTheStreamGradient) {
  const std::int64_t N = 3, D = 11;
  const float eps = 1e-6f;
  std::vector<double> x = random_vector(N * D, 80, -2, 2), b = random_vector(N * D, 81, -1, 1);
  std::vector<double> w = random_vector(D, 82, 0.5, 1.5);
  const auto dout = random_vector(N * D, 83), dh = random_vector(N * D, 84);
  std::vector<double> h(N * D), out(N * D), rstd(N);
  cpu::residual_rmsnorm_forward(h.data(), out.data(), rstd.data(), x.data(), b.data(), w.data(), N,
                                D, eps);
  std::vector<double> grad = dh, dw(D, 0.0);
  cpu::rmsnorm_backward(grad.data(), dw.data(), dout.data(), h.data(), w.data(), rstd.data(), N, D);

  auto loss = [&] {
    std::vector<double> hh(N * D), yy(N * D), rr(N);
    cpu::residual_rmsnorm_forward(hh.data(), yy.data(), rr.data(), x.data(), b.data(), w.data(), N,
                                  D, eps);
    return test::weighted_sum(dout, yy) + test::weighted_sum(dh, hh);
  };
  test::expect_gradient("d residual", x, grad, loss);
  test::expect_gradient("d branch", b, grad, loss);
  test::expect_gradient("d weight", w, dw, loss);
}

TEST(ResidualRmsNorm, CpuEngineMatchesItsAddAndNorm) {
  CpuBackend<float> backend;
  const std::int64_t N = 9, D = 37;
  const float eps = 1e-5f;
  const auto x = cast<float>(random_vector(N * D, 90, -2, 2));
  const auto b = cast<float>(random_vector(N * D, 91, -1, 1));
  const auto w = cast<float>(random_vector(D, 92, 0.5, 1.5));
  BackendBuffer tx(backend, N * D, DType::F32), tb(backend, N * D, DType::F32);
  BackendBuffer tw(backend, D, DType::F32), h(backend, N * D, DType::F32);
  BackendBuffer out(backend, N * D, DType::F32), rstd(backend, N, DType::F32);
  backend.upload(tx, x.data());
  backend.upload(tb, b.data());
  backend.upload(tw, w.data());
  backend.residual_rmsnorm_forward(h, out, rstd, tx, tb, tw, N, D, eps);

  BackendBuffer h2(backend, N * D, DType::F32), out2(backend, N * D, DType::F32);
  BackendBuffer rstd2(backend, N, DType::F32);
  backend.copy(h2, tx);
  backend.add_inplace(h2, tb);
  backend.rmsnorm_forward(out2, rstd2, h2, tw, N, D, eps);
  auto get = [&](const Tensor& t) {
    std::vector<float> v(static_cast<std::size_t>(t.numel));
    backend.download(v.data(), t);
    return v;
  };
  EXPECT_EQ(get(h), get(h2));
  EXPECT_EQ(get(out), get(out2));
  EXPECT_EQ(get(rstd), get(rstd2));

  // In place (branch == residual_out) is allowed; out on an input is not.
  backend.residual_rmsnorm_forward(tb, out, rstd, tx, tb, tw, N, D, eps);
  EXPECT_EQ(get(tb), get(h2));
  EXPECT_EQ(get(out), get(out2));
  EXPECT_THROW(backend.residual_rmsnorm_forward(h, tx, rstd, tx, tb, tw, N, D, eps), Error);
  EXPECT_THROW(backend.residual_rmsnorm_forward(h, out, rstd, tx, tb, tw, N, D + 1, eps), Error);
}

}  // namespace
}  // namespace minitron
