// Causal GQA attention reference: forward against an explicit score matrix, softmax and mask in
// double; backward against central differences in double.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/attention.h"
#include "tests/kernels/kernel_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using test::expect_gradient;
using test::random_vector;
using test::weighted_sum;

struct Shape {
  std::int64_t B, Tq, Tk, Hq, Hkv, hd;
};

// Written independently of the reference: the full [Tq, Tk] score matrix per (b, h), the mask
// as -infinity above the shifted diagonal, a softmax per row, then P @ V.
void naive_attention(const Shape& s, const std::vector<double>& q, const std::vector<double>& k,
                     const std::vector<double>& v, std::vector<double>& out,
                     std::vector<double>& lse) {
  out.assign(s.B * s.Tq * s.Hq * s.hd, 0.0);
  lse.assign(s.B * s.Hq * s.Tq, 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.hd));
  for (std::int64_t b = 0; b < s.B; ++b)
    for (std::int64_t h = 0; h < s.Hq; ++h) {
      const std::int64_t kv_head = h / (s.Hq / s.Hkv);
      std::vector<double> S(s.Tq * s.Tk);
      for (std::int64_t i = 0; i < s.Tq; ++i)
        for (std::int64_t j = 0; j < s.Tk; ++j) {
          double dot = 0;
          for (std::int64_t d = 0; d < s.hd; ++d)
            dot += q[((b * s.Tq + i) * s.Hq + h) * s.hd + d] *
                   k[((b * s.Tk + j) * s.Hkv + kv_head) * s.hd + d];
          const bool visible = j <= i + (s.Tk - s.Tq);
          S[i * s.Tk + j] = visible ? dot * scale : -std::numeric_limits<double>::infinity();
        }
      for (std::int64_t i = 0; i < s.Tq; ++i) {
        double max = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < s.Tk; ++j) max = std::max(max, S[i * s.Tk + j]);
        double sum = 0;
        for (std::int64_t j = 0; j < s.Tk; ++j) sum += std::exp(S[i * s.Tk + j] - max);
        lse[(b * s.Hq + h) * s.Tq + i] = max + std::log(sum);
        for (std::int64_t j = 0; j < s.Tk; ++j) {
          const double p = std::exp(S[i * s.Tk + j] - max) / sum;
          for (std::int64_t d = 0; d < s.hd; ++d)
            out[((b * s.Tq + i) * s.Hq + h) * s.hd + d] +=
                p * v[((b * s.Tk + j) * s.Hkv + kv_head) * s.hd + d];
        }
      }
    }
}

class AttentionForward : public ::testing::TestWithParam<Shape> {};

TEST_P(AttentionForward, MatchesExplicitScoreMatrix) {
  const Shape s = GetParam();
  const std::vector<double> q = random_vector(s.B * s.Tq * s.Hq * s.hd, 50, -2, 2);
  const std::vector<double> k = random_vector(s.B * s.Tk * s.Hkv * s.hd, 51, -2, 2);
  const std::vector<double> v = random_vector(s.B * s.Tk * s.Hkv * s.hd, 52);
  std::vector<double> expected, expected_lse;
  naive_attention(s, q, k, v, expected, expected_lse);

  std::vector<double> out(expected.size()), lse(expected_lse.size());
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk,
                         s.Hq, s.Hkv, s.hd);
  // double, sums of at most 64 O(1) terms: agreement to ~1e-14; 1e-12 leaves room.
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], expected[i], 1e-12) << i;
  for (std::size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse[i], expected_lse[i], 1e-12) << i;

  // float: scores and softmax in float over <= 9 keys and 64 dims; relative error ~1e-6.
  const std::vector<float> qf = test::to_float(q), kf = test::to_float(k), vf = test::to_float(v);
  std::vector<float> outf(out.size()), lsef(lse.size());
  cpu::attention_forward(outf.data(), lsef.data(), qf.data(), kf.data(), vf.data(), s.B, s.Tq, s.Tk,
                         s.Hq, s.Hkv, s.hd);
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(outf[i], expected[i], 2e-5) << i;
  for (std::size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lsef[i], expected_lse[i], 2e-5) << i;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionForward,
    ::testing::Values(Shape{2, 5, 5, 6, 2, 8},    // GQA, 3 query heads per KV head
                      Shape{1, 3, 7, 3, 1, 64},   // Tq < Tk (KV cache), odd heads, hd 64
                      Shape{2, 1, 1, 4, 4, 5},    // T = 1, plain multi-head
                      Shape{1, 1, 6, 5, 5, 3},    // one new query over a cache of 6
                      Shape{3, 9, 9, 4, 2, 16}),  // several samples, two groups
    [](const auto& info) {
      const Shape& s = info.param;
      // str() rather than std::string operator+, which trips GCC 12's false -Wrestrict.
      return str("B", s.B, "Tq", s.Tq, "Tk", s.Tk, "Hq", s.Hq, "Hkv", s.Hkv, "hd", s.hd);
    });

void check_attention_backward(const Shape& s, std::uint64_t seed) {
  std::vector<double> q = random_vector(s.B * s.Tq * s.Hq * s.hd, seed, -2, 2);
  std::vector<double> k = random_vector(s.B * s.Tk * s.Hkv * s.hd, seed + 1, -2, 2);
  std::vector<double> v = random_vector(s.B * s.Tk * s.Hkv * s.hd, seed + 2);
  const std::vector<double> dout = random_vector(q.size(), seed + 3);
  std::vector<double> out(q.size()), lse(s.B * s.Hq * s.Tq);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk,
                         s.Hq, s.Hkv, s.hd);
  // Garbage in the outputs: the backward must overwrite, not accumulate.
  std::vector<double> dq(q.size(), 7.0), dk(k.size(), 7.0), dv(v.size(), 7.0);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(),
                          q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);
  auto loss = [&] {
    std::vector<double> o, l;
    naive_attention(s, q, k, v, o, l);
    return weighted_sum(dout, o);
  };
  expect_gradient("dq", q, dq, loss);
  expect_gradient("dk", k, dk, loss);
  expect_gradient("dv", v, dv, loss);
}

TEST(AttentionBackward, GroupedHeadsMatchFiniteDifferences) {
  check_attention_backward(Shape{2, 4, 4, 6, 2, 3}, 60);
}

TEST(AttentionBackward, SingleTokenAndPlainMultiHead) {
  check_attention_backward(Shape{1, 1, 1, 3, 3, 4}, 70);
  check_attention_backward(Shape{1, 5, 5, 3, 3, 2}, 71);
}

TEST(AttentionBackward, QueriesShorterThanKeys) {
  check_attention_backward(Shape{1, 3, 5, 4, 2, 3}, 80);
}

TEST(AttentionBackward, IsBitwiseDeterministicAcrossThreadCounts) {
  const Shape s{2, 24, 24, 4, 2, 32};  // above the parallel threshold
  const std::vector<float> q = test::to_float(random_vector(s.B * s.Tq * s.Hq * s.hd, 90));
  const std::vector<float> k = test::to_float(random_vector(s.B * s.Tk * s.Hkv * s.hd, 91));
  const std::vector<float> v = test::to_float(random_vector(k.size(), 92));
  const std::vector<float> dout = test::to_float(random_vector(q.size(), 93));
  std::vector<float> out(q.size()), lse(s.B * s.Hq * s.Tq);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk,
                         s.Hq, s.Hkv, s.hd);
  std::vector<float> first;
  const int saved_threads = omp_get_max_threads();
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    // The forward again, through a caller-owned workspace (one score row per thread).
    std::vector<float> workspace(cpu::attention_forward_workspace(s.Tk));
    std::vector<float> out2(out.size()), lse2(lse.size());
    cpu::attention_forward(out2.data(), lse2.data(), q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk,
                           s.Hq, s.Hkv, s.hd, nullptr, workspace.data());
    EXPECT_EQ(0, std::memcmp(out2.data(), out.data(), out.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(lse2.data(), lse.data(), lse.size() * sizeof(float)));
    std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
    cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(),
                            q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);
    std::vector<float> all = dq;
    all.insert(all.end(), dk.begin(), dk.end());
    all.insert(all.end(), dv.begin(), dv.end());
    if (first.empty())
      first = all;
    else
      EXPECT_EQ(0, std::memcmp(first.data(), all.data(), all.size() * sizeof(float)));
  }
  omp_set_num_threads(saved_threads);
}

}  // namespace
}  // namespace minitron
