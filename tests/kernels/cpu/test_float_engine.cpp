// The float instantiations (the "cpu" engine) against the double ones on realistic widths: the
// double results are validated elsewhere against finite differences and naive loops, so this
// catches what only float shows (overflow, cancellation, a reduction that loses precision).
// Tolerances are relative to the largest magnitude of the compared output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/attention.h"
#include "kernels/loss.h"
#include "kernels/rmsnorm.h"
#include "tests/kernels/kernel_test_util.h"

namespace minitron {
namespace {

using test::random_vector;
using test::to_float;

void expect_close(const char* what, const std::vector<float>& f, const std::vector<double>& d,
                  double relative) {
  ASSERT_EQ(f.size(), d.size());
  double scale = 0;
  for (double x : d) scale = std::max(scale, std::abs(x));
  int failures = 0;
  for (std::size_t i = 0; i < d.size(); ++i)
    if (std::abs(f[i] - d[i]) > relative * scale && ++failures <= 5)
      ADD_FAILURE() << what << "[" << i << "]: float " << f[i] << ", double " << d[i];
}

// Inputs are rounded to float first, so both instantiations see identical values.
std::vector<double> widen(const std::vector<float>& f) { return {f.begin(), f.end()}; }

TEST(FloatEngine, RmsNormBackward) {
  const std::int64_t N = 16, D = 1024;
  const std::vector<float> xf = to_float(random_vector(N * D, 300, -4, 4));
  const std::vector<float> wf = to_float(random_vector(D, 301, 0.5, 1.5));
  const std::vector<float> df = to_float(random_vector(N * D, 302));
  std::vector<float> of(N * D), rf(N), dxf(N * D, 0.0f), dwf(D, 0.0f);
  cpu::rmsnorm_forward(of.data(), rf.data(), xf.data(), wf.data(), N, D, 1e-5f);
  cpu::rmsnorm_backward(dxf.data(), dwf.data(), df.data(), xf.data(), wf.data(), rf.data(), N, D);
  const std::vector<double> x = widen(xf), w = widen(wf), dout = widen(df);
  std::vector<double> o(N * D), r(N), dx(N * D, 0.0), dw(D, 0.0);
  cpu::rmsnorm_forward(o.data(), r.data(), x.data(), w.data(), N, D, 1e-5f);
  cpu::rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), r.data(), N, D);
  // Sums are in double in both; what remains is a few float roundings per element.
  expect_close("out", of, o, 1e-6);
  expect_close("din", dxf, dx, 1e-6);
  expect_close("dweight", dwf, dw, 1e-6);
}

TEST(FloatEngine, AttentionForwardBackward) {
  const std::int64_t B = 1, T = 65, Hq = 4, Hkv = 2, hd = 64;
  const std::vector<float> qf = to_float(random_vector(B * T * Hq * hd, 310, -1.5, 1.5));
  const std::vector<float> kf = to_float(random_vector(B * T * Hkv * hd, 311, -1.5, 1.5));
  const std::vector<float> vf = to_float(random_vector(B * T * Hkv * hd, 312));
  const std::vector<float> df = to_float(random_vector(qf.size(), 313));
  std::vector<float> of(qf.size()), lf(B * Hq * T), dqf(qf.size()), dkf(kf.size()), dvf(vf.size());
  cpu::attention_forward(of.data(), lf.data(), qf.data(), kf.data(), vf.data(), B, T, T, Hq, Hkv,
                         hd);
  cpu::attention_backward(dqf.data(), dkf.data(), dvf.data(), df.data(), of.data(), lf.data(),
                          qf.data(), kf.data(), vf.data(), B, T, T, Hq, Hkv, hd);
  const std::vector<double> q = widen(qf), k = widen(kf), v = widen(vf), dout = widen(df);
  std::vector<double> o(q.size()), l(B * Hq * T), dq(q.size()), dk(k.size()), dv(v.size());
  cpu::attention_forward(o.data(), l.data(), q.data(), k.data(), v.data(), B, T, T, Hq, Hkv, hd);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), o.data(), l.data(),
                          q.data(), k.data(), v.data(), B, T, T, Hq, Hkv, hd);
  // float sums of up to 65 keys x 64 dims (and 2 heads x 65 queries for dk/dv): error grows
  // like sqrt(length) * 6e-8 times the terms' size, a few 1e-6 of the largest output.
  expect_close("out", of, o, 1e-5);
  expect_close("lse", lf, l, 1e-6);
  expect_close("dq", dqf, dq, 3e-5);
  expect_close("dk", dkf, dk, 3e-5);
  expect_close("dv", dvf, dv, 3e-5);
}

TEST(FloatEngine, LossesOverALargeVocabulary) {
  const std::int64_t rows = 3, V = 50000;
  const std::vector<float> sf = to_float(random_vector(rows * V, 320, -20, 20));
  const std::vector<float> tf = to_float(random_vector(rows * V, 321, -20, 20));
  const std::vector<std::int32_t> targets = {17, 49999, 0};
  std::vector<float> ce_f = sf, loss_f(rows);
  cpu::cross_entropy(loss_f.data(), ce_f.data(), targets.data(), rows, V, 1.0f / 3);
  std::vector<double> ce = widen(sf), loss(rows);
  cpu::cross_entropy(loss.data(), ce.data(), targets.data(), rows, V, 1.0f / 3);
  expect_close("ce loss", loss_f, loss, 1e-6);  // sums in double: only output rounding
  expect_close("ce grad", ce_f, ce, 1e-6);

  std::vector<float> kl_f = sf, kl_loss_f(rows);
  cpu::kl_divergence(kl_loss_f.data(), kl_f.data(), tf.data(), rows, V, 2.0f, 0.25f);
  std::vector<double> kl = widen(sf), kl_loss(rows);
  const std::vector<double> t = widen(tf);
  cpu::kl_divergence(kl_loss.data(), kl.data(), t.data(), rows, V, 2.0f, 0.25f);
  expect_close("kl loss", kl_loss_f, kl_loss, 1e-6);
  expect_close("kl grad", kl_f, kl, 1e-6);
}

}  // namespace
}  // namespace minitron
