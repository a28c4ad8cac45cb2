// The CPU Backend: memory and conversions, matmul against naive loops, argument checking, the
// device factory, and gradient checks of small op chains through the Backend interface in
// double (which exercise the wiring: argument order, dtypes, accumulate-vs-overwrite).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/make_backend.h"
#include "kernels/swiglu.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/util/error_test_util.h"

namespace minitron {
namespace {

using test::expect_gradient;
using test::random_vector;
using test::weighted_sum;

// Uploads doubles exactly into an F64 tensor (Backend::upload goes through float).
Tensor make_f64(CpuBackend<double>& backend, const std::vector<double>& values) {
  Tensor t = backend.allocate(static_cast<std::int64_t>(values.size()), DType::F64);
  std::copy(values.begin(), values.end(), t.as<double>());
  return t;
}

std::vector<double> read_f64(const Tensor& t) { return {t.as<double>(), t.as<double>() + t.numel}; }

TEST(CpuBackend, AllocationIsZeroedAlignedAndFreedOnce) {
  CpuBackend<float> backend;
  Tensor t = backend.allocate(37, DType::F32);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data) % 64, 0u);
  for (std::int64_t i = 0; i < t.numel; ++i) EXPECT_EQ(t.as<float>()[i], 0.0f);
  Tensor copy = t;
  backend.free(t);
  EXPECT_TRUE(t.empty());
  EXPECT_THROW(backend.free(copy), Error);  // double free is caught, not undefined
  Tensor none = backend.allocate(0, DType::F32);
  EXPECT_TRUE(none.empty());
  backend.free(none);
}

TEST(CpuBackend, UploadDownloadAndCopyConvert) {
  CpuBackend<float> backend;
  const std::vector<float> host = {1.0f, -2.5f, 3.14159f, 1e-3f, 65504.0f};
  BackendBuffer f32(backend, 5, DType::F32), f64(backend, 5, DType::F64),
      bf16(backend, 5, DType::BF16), back(backend, 5, DType::F32), ids(backend, 5, DType::I32);
  backend.upload(f32, host.data());
  backend.copy(f64, f32);
  backend.copy(bf16, f64);
  std::vector<float> out(5);
  backend.download(out.data(), f64);
  EXPECT_EQ(out, host);
  // download_f64 is exact for F64 (the gradient checks read losses through it).
  CpuBackend<double> backend64;
  BackendBuffer exact(backend64, 1, DType::F64);
  exact.tensor().as<double>()[0] = 1.0 + 1e-12;
  double read_back = 0;
  backend64.download_f64(&read_back, exact);
  EXPECT_EQ(read_back, 1.0 + 1e-12);
  std::vector<double> widened(5);
  backend.download_f64(widened.data(), bf16);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(widened[i], round_to_bf16(host[i]));
  backend.download(out.data(), bf16);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(out[i], round_to_bf16(host[i]));
  backend.copy(back, bf16);
  backend.download(out.data(), back);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(out[i], round_to_bf16(host[i]));

  const std::vector<std::int32_t> tokens = {4, 0, 7, -1, 2};
  backend.upload_i32(ids, tokens.data());
  backend.copy(back, ids);
  backend.download(out.data(), back);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(out[i], static_cast<float>(tokens[i]));
  EXPECT_THROW(backend.upload_i32(f32, tokens.data()), Error);
  EXPECT_THROW(backend.upload(ids, host.data()), Error);
  EXPECT_THROW(backend.copy(ids, f32), Error);
}

// out = alpha * op(a) @ op(b) + beta * out, in double, straight from the definition.
std::vector<double> naive_matmul(const std::vector<double>& a, const std::vector<double>& b,
                                 const std::vector<double>& c, std::int64_t M, std::int64_t N,
                                 std::int64_t K, bool ta, bool tb, double alpha, double beta) {
  std::vector<double> out(M * N);
  for (std::int64_t i = 0; i < M; ++i)
    for (std::int64_t j = 0; j < N; ++j) {
      double sum = 0;
      for (std::int64_t k = 0; k < K; ++k)
        sum += (ta ? a[k * M + i] : a[i * K + k]) * (tb ? b[j * K + k] : b[k * N + j]);
      out[i * N + j] = alpha * sum + beta * c[i * N + j];
    }
  return out;
}

template <typename T>
void check_matmul() {
  CpuBackend<T> backend;
  const std::int64_t M = 5, N = 7, K = 3;
  const float alpha = 0.75f, beta = -0.5f;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      const std::vector<double> a = random_vector(M * K, 200), b = random_vector(K * N, 201);
      const std::vector<double> c = random_vector(M * N, 202);
      const std::vector<double> expected = naive_matmul(a, b, c, M, N, K, ta, tb, alpha, beta);
      BackendBuffer ta_(backend, M * K, dtype_of<T>()), tb_(backend, K * N, dtype_of<T>()),
          out(backend, M * N, dtype_of<T>());
      std::copy(a.begin(), a.end(), ta_.tensor().as<T>());
      std::copy(b.begin(), b.end(), tb_.tensor().as<T>());
      std::copy(c.begin(), c.end(), out.tensor().as<T>());
      backend.matmul(out, ta_, tb_, M, N, K, ta, tb, alpha, beta);
      // K = 3 products of O(1) values: float rounding ~1e-7, double ~1e-16.
      const double tolerance = std::is_same_v<T, float> ? 1e-6 : 1e-14;
      for (std::int64_t i = 0; i < M * N; ++i)
        EXPECT_NEAR(out.tensor().template as<T>()[i], expected[i], tolerance)
            << "trans_a " << ta << " trans_b " << tb << " element " << i;
    }
}

TEST(CpuBackend, MatmulAllTransposesWithAlphaBeta) {
  check_matmul<float>();
  check_matmul<double>();
}

TEST(CpuBackend, MisuseFailsLoudlyNamingTheArgument) {
  CpuBackend<float> backend;
  BackendBuffer a(backend, 6, DType::F32), b(backend, 6, DType::F32), out(backend, 4, DType::F32);
  BackendBuffer wrong_type(backend, 6, DType::F64);
  // [2,3] @ [3,2] is fine; claiming K = 4 is not.
  backend.matmul(out, a, b, 2, 2, 3, false, false, 1.0f, 0.0f);
  EXPECT_NE(testing::error_of([&] {
              backend.matmul(out, a, b, 2, 2, 4, false, false, 1.0f, 0.0f);
            }).find("matmul: a has 6 elements (expected 8)"),
            std::string::npos);
  EXPECT_NE(testing::error_of([&] {
              backend.matmul(out, wrong_type, b, 2, 2, 3, false, false, 1.0f, 0.0f);
            }).find("matmul: a is f64 (expected f32)"),
            std::string::npos);
  EXPECT_THROW(backend.matmul(a, a, b, 2, 3, 3, false, false, 1.0f, 0.0f), Error);  // aliasing

  BackendBuffer lse_short(backend, 3, DType::F32), q(backend, 2 * 4 * 2, DType::F32);
  BackendBuffer att(backend, 2 * 4 * 2, DType::F32);
  EXPECT_NE(testing::error_of([&] {
              backend.attention_forward(att, lse_short, q, q, q, 1, 2, 2, 4, 4, 2);
            }).find("lse"),
            std::string::npos);
  BackendBuffer master(backend, 6, DType::F32), m(backend, 6, DType::F32),
      v(backend, 6, DType::F32);
  AdamWStep step;
  EXPECT_THROW(backend.adamw_update(a, master, b, m, v, step), Error);  // master must be empty
  EXPECT_NO_THROW(backend.adamw_update(a, Tensor{}, b, m, v, step));
  BackendBuffer tokens(backend, 2, DType::I32);
  const std::vector<std::int32_t> ids = {0, 9};
  backend.upload_i32(tokens, ids.data());
  EXPECT_THROW(backend.embedding_forward(b, tokens, a, 2, 3), Error);  // id 9 of vocab 2
  EXPECT_THROW(backend.embedding_forward(b, tokens, a, 2, 4), Error);  // 6 is not [vocab, 4]
}

TEST(MakeBackend, NamesDevicesAndRejectsUnknownOnes) {
  auto cpu = make_backend("cpu");
  EXPECT_EQ(cpu->name(), "cpu");
  EXPECT_EQ(cpu->activation_dtype(), DType::F32);
  auto f64 = make_backend("cpu-f64");
  EXPECT_EQ(f64->name(), "cpu-f64");
  EXPECT_EQ(f64->gradient_dtype(), DType::F64);
  const std::vector<std::string> devices = available_devices();
  EXPECT_NE(std::find(devices.begin(), devices.end(), "cpu"), devices.end());
  EXPECT_NE(std::find(devices.begin(), devices.end(), "cpu-f64"), devices.end());
  EXPECT_NE(testing::error_of([] { make_backend("tpu"); }).find("cpu, cpu-f64, cuda"),
            std::string::npos);
#if !defined(MINITRON_HAVE_CUDA_BACKEND)
  EXPECT_NE(testing::error_of([] { make_backend("cuda"); }).find("no CUDA engine"),
            std::string::npos);
#endif
}

TEST(CpuBackend, StatisticsMayBeF32OrF64OnTheDoubleBackend) {
  CpuBackend<double> backend;
  const std::int64_t N = 3, D = 5;
  Tensor in = make_f64(backend, random_vector(N * D, 210)),
         w = make_f64(backend, random_vector(D, 211));
  Tensor out = backend.allocate(N * D, DType::F64);
  Tensor rstd64 = backend.allocate(N, DType::F64), rstd32 = backend.allocate(N, DType::F32);
  backend.rmsnorm_forward(out, rstd64, in, w, N, D, 1e-5f);
  backend.rmsnorm_forward(out, rstd32, in, w, N, D, 1e-5f);
  for (std::int64_t n = 0; n < N; ++n)
    EXPECT_EQ(rstd32.as<float>()[n], static_cast<float>(rstd64.as<double>()[n]));
  for (Tensor* t : {&in, &w, &out, &rstd64, &rstd32}) backend.free(*t);
}

// embedding -> RMSNorm -> logits = h @ W^T -> cross-entropy, forward and backward through the
// Backend interface in double, against central differences of the same forward.
TEST(CpuBackendGradients, EmbeddingNormHeadCrossEntropy) {
  CpuBackend<double> backend;
  const std::int64_t V = 6, D = 4, N = 5;
  const std::vector<std::int32_t> tokens = {2, 5, 2, 0, 3}, targets = {1, 4, -1, 0, 5};
  std::vector<double> table = random_vector(V * D, 220), norm_w = random_vector(D, 221, 0.5, 1.5),
                      head = random_vector(V * D, 222);
  BackendBuffer tok(backend, N, DType::I32), tgt(backend, N, DType::I32);
  backend.upload_i32(tok, tokens.data());
  backend.upload_i32(tgt, targets.data());
  BackendBuffer x(backend, N * D, DType::F64), h(backend, N * D, DType::F64),
      rstd(backend, N, DType::F32), logits(backend, N * V, DType::F64),
      losses(backend, N, DType::F32);

  auto forward = [&](const std::vector<double>& tab, const std::vector<double>& nw,
                     const std::vector<double>& hd, Tensor t_tab, Tensor t_nw, Tensor t_head,
                     double grad_scale) {
    std::copy(tab.begin(), tab.end(), t_tab.as<double>());
    std::copy(nw.begin(), nw.end(), t_nw.as<double>());
    std::copy(hd.begin(), hd.end(), t_head.as<double>());
    backend.embedding_forward(x, tok, t_tab, N, D);
    backend.rmsnorm_forward(h, rstd, x, t_nw, N, D, 1e-5f);
    backend.matmul(logits, h, t_head, N, V, D, false, true, 1.0f, 0.0f);
    backend.cross_entropy(losses, logits, tgt, N, V, static_cast<float>(grad_scale));
    double total = 0;
    for (std::int64_t r = 0; r < N; ++r) total += losses.tensor().as<float>()[r];
    return total;
  };
  BackendBuffer t_tab(backend, V * D, DType::F64), t_nw(backend, D, DType::F64),
      t_head(backend, V * D, DType::F64);
  BackendBuffer g_tab(backend, V * D, DType::F64), g_nw(backend, D, DType::F64),
      g_head(backend, V * D, DType::F64), dh(backend, N * D, DType::F64),
      dx(backend, N * D, DType::F64);
  forward(table, norm_w, head, t_tab, t_nw, t_head, 1.0);  // logits now hold dloss/dlogits
  backend.matmul(dh, logits, t_head, N, D, V, false, false, 1.0f, 0.0f);
  backend.matmul(g_head, logits, h, V, D, N, true, false, 1.0f, 1.0f);
  backend.rmsnorm_backward(dx, g_nw, dh, x, t_nw, rstd, N, D);
  backend.embedding_backward(g_tab, dx, tok, N, D);

  // Losses travel through an F32 tensor (as backend.h asks), so the loss is good to ~1e-7
  // relative; with step 1e-3 the rounding error of the difference is ~1e-7 * 3 / 1e-3 ~ 3e-4
  // at worst and truncation ~1e-6: tolerance 1e-3.
  BackendBuffer s_tab(backend, V * D, DType::F64), s_nw(backend, D, DType::F64),
      s_head(backend, V * D, DType::F64);
  auto loss = [&] { return forward(table, norm_w, head, s_tab, s_nw, s_head, 0.0); };
  expect_gradient("dtable", table, read_f64(g_tab), loss, 1e-3, 1e-3);
  expect_gradient("dnorm", norm_w, read_f64(g_nw), loss, 1e-3, 1e-3);
  expect_gradient("dhead", head, read_f64(g_head), loss, 1e-3, 1e-3);
}

// rope(q), rope(k) -> attention -> sum(dout * out); then attention_backward and rope_backward,
// all through the Backend in double with F64 statistics.
TEST(CpuBackendGradients, RopeAttention) {
  CpuBackend<double> backend;
  const std::int64_t B = 2, T = 3, Hq = 4, Hkv = 2, hd = 4;
  std::vector<double> q = random_vector(B * T * Hq * hd, 230),
                      k = random_vector(B * T * Hkv * hd, 231),
                      v = random_vector(B * T * Hkv * hd, 232);
  const std::vector<double> dout = random_vector(q.size(), 233);
  const std::vector<double> inv = {1.0, 0.01};
  BackendBuffer inv_freq(backend, 2, DType::F64), lse(backend, B * Hq * T, DType::F64);
  std::copy(inv.begin(), inv.end(), inv_freq.tensor().as<double>());
  BackendBuffer tq(backend, q.size(), DType::F64), tk(backend, k.size(), DType::F64),
      tv(backend, v.size(), DType::F64), out(backend, q.size(), DType::F64);
  auto forward = [&] {
    std::copy(q.begin(), q.end(), tq.tensor().as<double>());
    std::copy(k.begin(), k.end(), tk.tensor().as<double>());
    std::copy(v.begin(), v.end(), tv.tensor().as<double>());
    backend.rope_forward(tq, inv_freq, B, T, Hq, hd, 2);
    backend.rope_forward(tk, inv_freq, B, T, Hkv, hd, 2);
    backend.attention_forward(out, lse, tq, tk, tv, B, T, T, Hq, Hkv, hd);
    return weighted_sum(dout, read_f64(out));
  };
  forward();
  Tensor tdout = make_f64(backend, dout);
  BackendBuffer dq(backend, q.size(), DType::F64), dk(backend, k.size(), DType::F64),
      dv(backend, v.size(), DType::F64);
  backend.attention_backward(dq, dk, dv, tdout, out, lse, tq, tk, tv, B, T, Hq, Hkv, hd);
  backend.rope_backward(dq, inv_freq, B, T, Hq, hd, 2);
  backend.rope_backward(dk, inv_freq, B, T, Hkv, hd, 2);
  expect_gradient("dq", q, read_f64(dq), forward);
  expect_gradient("dk", k, read_f64(dk), forward);
  expect_gradient("dv", v, read_f64(dv), forward);
  backend.free(tdout);
}

// The remaining ops through the Backend agree with the reference templates called directly
// (they only check the wiring; the templates themselves are tested in the other files).
TEST(CpuBackend, RemainingOpsRouteToTheReferences) {
  CpuBackend<double> backend;
  const std::int64_t n = 12;
  const std::vector<double> g = random_vector(n, 240), u = random_vector(n, 241),
                            dh = random_vector(n, 242);
  Tensor tg = make_f64(backend, g), tu = make_f64(backend, u), tdh = make_f64(backend, dh);
  Tensor th = backend.allocate(n, DType::F64), tdg = backend.allocate(n, DType::F64),
         tdu = backend.allocate(n, DType::F64);
  backend.swiglu_forward(th, tg, tu, n);
  backend.swiglu_backward(tdg, tdu, tdh, tg, tu, n);
  std::vector<double> h(n), dg(n), du(n);
  cpu::swiglu_forward(h.data(), g.data(), u.data(), n);
  cpu::swiglu_backward(dg.data(), du.data(), dh.data(), g.data(), u.data(), n);
  EXPECT_EQ(read_f64(th), h);
  EXPECT_EQ(read_f64(tdg), dg);
  EXPECT_EQ(read_f64(tdu), du);

  // reduce_over_sequence over [B=2, T=3, C=2] as g; row_cosine of g and u as [3, 4].
  Tensor red = backend.allocate(4, DType::F32), cosine = backend.allocate(3, DType::F64);
  backend.reduce_over_sequence(red, tg, 2, 3, 2, SequenceReduction::L2);
  EXPECT_NEAR(red.as<float>()[1], std::sqrt(g[1] * g[1] + g[3] * g[3] + g[5] * g[5]),
              1e-6);  // float output
  backend.row_cosine(cosine, tg, tu, 3, 4);
  double dot = 0, gg = 0, uu = 0;
  for (int c = 4; c < 8; ++c) dot += g[c] * u[c], gg += g[c] * g[c], uu += u[c] * u[c];
  EXPECT_NEAR(cosine.as<double>()[1], dot / std::sqrt(gg * uu), 1e-15);  // double, 4 terms

  EXPECT_NEAR(
      backend.sum_of_squares(tg),
      [&] {
        double s = 0;
        for (double x : g) s += x * x;
        return s;
      }(),
      1e-15);  // 12 terms of O(1) in double

  // KL through the backend with F32 losses: identical logits give 0.
  Tensor kl = backend.allocate(3, DType::F32), student = make_f64(backend, g);
  backend.kl_divergence(kl, student, tg, 3, 4, 2.0f, 1.0f);
  for (int r = 0; r < 3; ++r) EXPECT_NEAR(kl.as<float>()[r], 0.0f, 1e-7);  // float zero

  // add_inplace / scale_inplace / zero.
  backend.add_inplace(th, tg);
  backend.scale_inplace(th, 2.0f);
  for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(th.as<double>()[i], 2.0 * (h[i] + g[i]));
  backend.zero(th);
  for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(th.as<double>()[i], 0.0);
  for (Tensor* t : {&tg, &tu, &tdh, &th, &tdg, &tdu, &red, &cosine, &kl, &student})
    backend.free(*t);
}

}  // namespace
}  // namespace minitron
