// The strided views of the fused projections (core/row_strides.h) on every engine: the CPU
// engine, the emulated CUDA engine in fp32 (CUDA-core attention) and in bf16 (tensor-core
// attention). Each op run over strided views of a fused buffer must give, to the bit, what the
// same engine gives over dense copies of those views (the dense ops have their own tests against
// the references), and must leave every element outside its views untouched. The CPU engine's
// concatenated matmul must equal the separate products to the bit (its results do not change
// with fused projections).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/make_backend.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

struct Engine {
  const char* name;
  bool cuda;
  DType dtype;
};

std::ostream& operator<<(std::ostream& os, const Engine& e) { return os << e.name; }

class StridedViews : public ::testing::TestWithParam<Engine> {
 protected:
  StridedViews() : backend_(GetParam().cuda ? make_cuda_backend() : make_backend("cpu")) {}
  Backend& b() { return *backend_; }
  DType dt() const { return GetParam().dtype; }
  BackendBuffer put(const std::vector<float>& host, DType dtype) {
    BackendBuffer t(*backend_, static_cast<std::int64_t>(host.size()), dtype);
    backend_->upload(t, host.data());
    return t;
  }
  BackendBuffer put(const std::vector<float>& host) { return put(host, dt()); }
  std::vector<float> get(const Tensor& t) {
    std::vector<float> host(static_cast<std::size_t>(t.numel));
    backend_->download(host.data(), t);
    return host;
  }

 private:
  std::unique_ptr<Backend> backend_;
};

// Columns [col, col + width) of every row of a [rows, stride] matrix, densely.
std::vector<float> columns(const std::vector<float>& m, std::int64_t rows, std::int64_t stride,
                           std::int64_t col, std::int64_t width) {
  std::vector<float> out;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < width; ++c) out.push_back(m[r * stride + col + c]);
  return out;
}

// The elements of a [rows, stride] matrix outside columns [col, col + width), in order.
std::vector<float> outside(const std::vector<float>& m, std::int64_t rows, std::int64_t stride,
                           std::int64_t col, std::int64_t width) {
  std::vector<float> out;
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < stride; ++c)
      if (c < col || c >= col + width) out.push_back(m[r * stride + c]);
  return out;
}

// Bitwise equality (NaN included), reporting the first mismatch.
void expect_same(const std::string& what, const std::vector<float>& got,
                 const std::vector<float>& want) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (std::size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      ADD_FAILURE() << what << "[" << i << "]: " << got[i] << " vs " << want[i];
      return;
    }
}

TEST_P(StridedViews, RopeOverTheQAndKHeadsOfAFusedRow) {
  // q|k|v of 3 + 1 + 1 heads of 16: rotate q and k (4 heads) in place, v untouched; rows of the
  // fused width, and 3 elements wider (rows off 16-byte boundaries: the element-wise path).
  const std::int64_t B = 2, T = 7, hd = 16, Hq = 3, Hkv = 1;
  const std::int64_t QD = Hq * hd, KVD = Hkv * hd, N = B * T;
  std::vector<float> inv_freq(hd / 2);
  for (std::int64_t i = 0; i < hd / 2; ++i)
    inv_freq[static_cast<std::size_t>(i)] = static_cast<float>(std::pow(10000.0, -2.0 * i / hd));
  auto f = put(inv_freq, DType::F32);
  for (const std::int64_t S : {QD + 2 * KVD, QD + 2 * KVD + 3})
    for (const bool packed : {false, true}) {
      const auto fused = stored(random_floats(static_cast<std::size_t>(N * S), 11, -2, 2), dt());
      std::vector<std::int32_t> positions(static_cast<std::size_t>(N));
      for (std::int64_t r = 0; r < N; ++r)
        positions[static_cast<std::size_t>(r)] =
            static_cast<std::int32_t>(r % T < 3 ? r % T : r % T - 3);
      BackendBuffer pos(b(), N, DType::I32);
      b().upload_i32(pos, positions.data());
      const Tensor places = packed ? pos.tensor() : Tensor{};
      const std::int64_t offset = packed ? 0 : 5;
      auto x = put(fused);
      auto dense = put(columns(fused, N, S, 0, QD + KVD));
      const Tensor view = x.tensor().slice(0, strided_numel(N, QD + KVD, S));
      b().rope_forward(view, f, B, T, Hq + Hkv, hd, offset, places, S);
      b().rope_forward(dense, f, B, T, Hq + Hkv, hd, offset, places);
      const std::string what = str(packed ? "packed" : "offset", ", row stride ", S);
      const auto got = get(x);
      expect_same("rope forward " + what, columns(got, N, S, 0, QD + KVD), get(dense));
      expect_same("rope forward leaves v " + what, outside(got, N, S, 0, QD + KVD),
                  outside(fused, N, S, 0, QD + KVD));
      b().rope_backward(view, f, B, T, Hq + Hkv, hd, offset, places, S);
      b().rope_backward(dense, f, B, T, Hq + Hkv, hd, offset, places);
      expect_same("rope backward " + what, columns(get(x), N, S, 0, QD + KVD), get(dense));
    }
}

TEST_P(StridedViews, SwigluReadsAndWritesTheFusedGateUp) {
  // F = 24 (whole 16-byte packs in bf16 and fp32) and F = 13 (none): both CUDA paths.
  for (const std::int64_t F : {24, 13}) {
    const std::int64_t N = 9, S = 2 * F;
    const auto gate_up = stored(random_floats(static_cast<std::size_t>(N * S), 12, -5, 5), dt());
    const auto dh = stored(random_floats(static_cast<std::size_t>(N * F), 13, -1, 1), dt());
    auto fused = put(gate_up);
    auto gate = put(columns(gate_up, N, S, 0, F)), up = put(columns(gate_up, N, S, F, F));
    auto h = put(std::vector<float>(static_cast<std::size_t>(N * F), 0.0f));
    auto want_h = put(std::vector<float>(static_cast<std::size_t>(N * F), 0.0f));
    const Tensor g = fused.tensor().slice(0, strided_numel(N, F, S));
    const Tensor u = fused.tensor().slice(F, strided_numel(N, F, S));
    b().swiglu_forward(h, g, u, N * F, F, S);
    b().swiglu_forward(want_h, gate, up, N * F);
    expect_same(str("swiglu forward F ", F), get(h), get(want_h));

    // The backward writes dgate|dup into one fused gradient, every element of it.
    auto tdh = put(dh);
    auto dfused = put(std::vector<float>(static_cast<std::size_t>(N * S), NAN));
    auto dgate = put(std::vector<float>(static_cast<std::size_t>(N * F), 0.0f));
    auto dup = put(std::vector<float>(static_cast<std::size_t>(N * F), 0.0f));
    b().swiglu_backward(dfused.tensor().slice(0, strided_numel(N, F, S)),
                        dfused.tensor().slice(F, strided_numel(N, F, S)), tdh, g, u, N * F, F, S);
    b().swiglu_backward(dgate, dup, tdh, gate, up, N * F);
    const auto got = get(dfused);
    expect_same(str("swiglu dgate F ", F), columns(got, N, S, 0, F), get(dgate));
    expect_same(str("swiglu dup F ", F), columns(got, N, S, F, F), get(dup));
  }
}

TEST_P(StridedViews, AttentionOverTheFusedQkvAndItsGradient) {
  // GQA group 2, head_dim 16 (the tensor-core kernels in bf16), sequences over the tiles.
  const std::int64_t B = 2, T = 37, hd = 16, Hq = 4, Hkv = 2;
  const std::int64_t QD = Hq * hd, KVD = Hkv * hd, S = QD + 2 * KVD, N = B * T;
  const auto qkv = stored(random_floats(static_cast<std::size_t>(N * S), 14, -1, 1), dt());
  const auto dout = stored(random_floats(static_cast<std::size_t>(N * QD), 15, -1, 1), dt());
  auto fused = put(qkv);
  auto q = put(columns(qkv, N, S, 0, QD)), k = put(columns(qkv, N, S, QD, KVD));
  auto v = put(columns(qkv, N, S, QD + KVD, KVD));
  const Tensor qs = fused.tensor().slice(0, strided_numel(N, QD, S));
  const Tensor ks = fused.tensor().slice(QD, strided_numel(N, KVD, S));
  const Tensor vs = fused.tensor().slice(QD + KVD, strided_numel(N, KVD, S));
  auto out = put(std::vector<float>(static_cast<std::size_t>(N * QD), 0.0f));
  auto want_out = put(std::vector<float>(static_cast<std::size_t>(N * QD), 0.0f));
  auto lse = put(std::vector<float>(static_cast<std::size_t>(B * Hq * T), 0.0f), DType::F32);
  auto want_lse = put(std::vector<float>(static_cast<std::size_t>(B * Hq * T), 0.0f), DType::F32);
  b().attention_forward(out, lse, qs, ks, vs, B, T, T, Hq, Hkv, hd, {}, {S, S, S, 0});
  b().attention_forward(want_out, want_lse, q, k, v, B, T, T, Hq, Hkv, hd);
  expect_same("attention out", get(out), get(want_out));
  expect_same("attention lse", get(lse), get(want_lse));

  // The output at a row stride too (o_stride): a padded [N, QD + 8] buffer.
  auto padded = put(std::vector<float>(static_cast<std::size_t>(N * (QD + 8)), 7.0f));
  b().attention_forward(padded.tensor().slice(0, strided_numel(N, QD, QD + 8)), lse, qs, ks, vs, B,
                        T, T, Hq, Hkv, hd, {}, {S, S, S, QD + 8});
  const auto got_padded = get(padded);
  expect_same("attention strided out", columns(got_padded, N, QD + 8, 0, QD), get(want_out));
  expect_same("attention strided out padding", outside(got_padded, N, QD + 8, 0, QD),
              std::vector<float>(static_cast<std::size_t>(N * 8), 7.0f));

  // Backward into one fused dq|dk|dv, reading q, k, v from the fused forward buffer.
  auto tdout = put(dout);
  auto dfused = put(std::vector<float>(static_cast<std::size_t>(N * S), NAN));
  auto dq = put(std::vector<float>(static_cast<std::size_t>(N * QD), 0.0f));
  auto dk = put(std::vector<float>(static_cast<std::size_t>(N * KVD), 0.0f));
  auto dv = put(std::vector<float>(static_cast<std::size_t>(N * KVD), 0.0f));
  const Tensor d = dfused.tensor();
  b().attention_backward(d.slice(0, strided_numel(N, QD, S)), d.slice(QD, strided_numel(N, KVD, S)),
                         d.slice(QD + KVD, strided_numel(N, KVD, S)), tdout, want_out, want_lse, qs,
                         ks, vs, B, T, Hq, Hkv, hd, {}, {S, S, S, 0, 0, S, S, S});
  b().attention_backward(dq, dk, dv, tdout, want_out, want_lse, q, k, v, B, T, Hq, Hkv, hd);
  const auto got = get(dfused);
  expect_same("attention dq", columns(got, N, S, 0, QD), get(dq));
  expect_same("attention dk", columns(got, N, S, QD, KVD), get(dk));
  expect_same("attention dv", columns(got, N, S, QD + KVD, KVD), get(dv));
}

TEST_P(StridedViews, CopyRowsTakesTheKeysOutOfTheFusedRow) {
  const std::int64_t N = 5, S = 12, width = 4;
  const auto m = stored(random_floats(static_cast<std::size_t>(N * S), 16, -1, 1), dt());
  auto src = put(m);
  auto dst = put(std::vector<float>(static_cast<std::size_t>(N * width), 0.0f));
  b().copy_rows(dst, src.tensor().slice(6, strided_numel(N, width, S)), N, width, width, S);
  expect_same("copy_rows", get(dst), columns(m, N, S, 6, width));
}

INSTANTIATE_TEST_SUITE_P(Engines, StridedViews,
                         ::testing::Values(Engine{"cpu", false, DType::F32},
                                           Engine{"cuda_f32", true, DType::F32},
                                           Engine{"cuda_bf16", true, DType::BF16}),
                         [](const auto& info) { return std::string(info.param.name); });

// The CPU engine computes a concatenated matmul as its separate products: each of the three
// forms the fused projections use (forward over N, input gradient over K, weight gradient over
// M) equals the separate matmuls, to the bit. Row counts over and under the 64 rows that switch
// the CPU engine between its row-independent product and BLAS.
TEST(CpuConcatenatedMatmul, EqualsTheSeparateProducts) {
  const std::unique_ptr<Backend> backend = make_backend("cpu");
  Backend& b = *backend;
  const std::array<std::int64_t, 3> parts{40, 8, 8};
  const std::int64_t W = 56, D = 24;  // the concatenated weight [W, D]
  const auto weight = random_floats(static_cast<std::size_t>(W * D), 17, -1, 1);
  auto put = [&](const std::vector<float>& host) {
    BackendBuffer t(b, static_cast<std::int64_t>(host.size()), DType::F32);
    b.upload(t, host.data());
    return t;
  };
  auto get = [&](const Tensor& t) {
    std::vector<float> host(static_cast<std::size_t>(t.numel));
    b.download(host.data(), t);
    return host;
  };
  auto wt = put(weight);
  for (const std::int64_t N : {std::int64_t{5}, std::int64_t{150}}) {
    const auto x = random_floats(static_cast<std::size_t>(N * D), 18 + N, -1, 1);
    const auto dy = random_floats(static_cast<std::size_t>(N * W), 19 + N, -1, 1);
    auto xt = put(x), dyt = put(dy);
    // Forward: y [N, W] = x W^T.
    auto y = put(std::vector<float>(static_cast<std::size_t>(N * W), 0.0f));
    b.matmul_concatenated(y, xt, wt, N, W, D, false, true, 1.0f, 0.0f, ConcatenatedDim::N, parts);
    // Input gradient: dx [N, D] = dy W, accumulated onto 1s (beta 1).
    auto dx = put(std::vector<float>(static_cast<std::size_t>(N * D), 1.0f));
    b.matmul_concatenated(dx, dyt, wt, N, D, W, false, false, 1.0f, 1.0f, ConcatenatedDim::K,
                          parts);
    // Weight gradient: dW [W, D] = dy^T x.
    auto dw = put(std::vector<float>(static_cast<std::size_t>(W * D), 0.0f));
    b.matmul_concatenated(dw, dyt, xt, W, D, N, true, false, 1.0f, 0.0f, ConcatenatedDim::M, parts);

    std::vector<float> want_y(static_cast<std::size_t>(N * W)), want_dw;
    std::vector<float> want_dx(static_cast<std::size_t>(N * D), 1.0f);
    auto acc = put(want_dx);
    std::int64_t at = 0;
    for (const std::int64_t p : parts) {
      auto wp = put(std::vector<float>(weight.begin() + at * D, weight.begin() + (at + p) * D));
      auto dyp = put(columns(dy, N, W, at, p));
      auto yp = put(std::vector<float>(static_cast<std::size_t>(N * p), 0.0f));
      b.matmul(yp, xt, wp, N, p, D, false, true);
      b.matmul(acc, dyp, wp, N, D, p, false, false, 1.0f, 1.0f);
      auto dwp = put(std::vector<float>(static_cast<std::size_t>(p * D), 0.0f));
      b.matmul(dwp, dyp, xt, p, D, N, true, false);
      const auto ypart = get(yp), dwpart = get(dwp);
      for (std::int64_t r = 0; r < N; ++r)
        for (std::int64_t c = 0; c < p; ++c)
          want_y[static_cast<std::size_t>(r * W + at + c)] =
              ypart[static_cast<std::size_t>(r * p + c)];
      want_dw.insert(want_dw.end(), dwpart.begin(), dwpart.end());
      at += p;
    }
    expect_same(str("forward N ", N), get(y), want_y);
    expect_same(str("input gradient N ", N), get(dx), get(acc));
    expect_same(str("weight gradient N ", N), get(dw), want_dw);
  }
}

}  // namespace
}  // namespace minitron::test
