// The CPU engine's BLAS-tiled attention (kernels/cpu/attention_blas.h) against the plain reference
// (kernels/attention.h, itself checked against a naive softmax and finite differences in
// test_attention.cpp): same outputs up to rounding, in double and in float, over shapes that
// cover partial tiles, several tiles, GQA groups and queries shorter than keys.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "kernels/cpu/attention_blas.h"
#include "tests/kernels/kernel_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using test::random_vector;

struct Shape {
  std::int64_t B, Tq, Tk, Hq, Hkv, hd;
};

template <typename T>
struct Results {
  std::vector<T> out, lse, dq, dk, dv;
};

template <typename T>
struct Inputs {
  std::vector<T> q, k, v, dout;
};

template <typename T>
Inputs<T> make_inputs(const Shape& s, std::uint64_t seed) {
  auto convert = [](const std::vector<double>& x) { return std::vector<T>(x.begin(), x.end()); };
  return {convert(random_vector(s.B * s.Tq * s.Hq * s.hd, seed, -2, 2)),
          convert(random_vector(s.B * s.Tk * s.Hkv * s.hd, seed + 1, -2, 2)),
          convert(random_vector(s.B * s.Tk * s.Hkv * s.hd, seed + 2)),
          convert(random_vector(s.B * s.Tq * s.Hq * s.hd, seed + 3))};
}

// Forward, then (when Tq == Tk, the only case the backend's backward takes) the backward from
// the same out and lse, by the reference or the tiled path. Outputs start as garbage so that
// anything left unwritten or accumulated instead of overwritten shows.
template <typename T>
Results<T> run(const Shape& s, const Inputs<T>& in, bool tiled) {
  Results<T> r;
  r.out.assign(in.q.size(), T(7));
  r.lse.assign(s.B * s.Hq * s.Tq, T(7));
  if (tiled)
    cpu::attention_forward_tiles(r.out.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(),
                                 s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);
  else
    cpu::attention_forward(r.out.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B,
                           s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);
  if (s.Tq != s.Tk) return r;
  r.dq.assign(in.q.size(), T(7));
  r.dk.assign(in.k.size(), T(7));
  r.dv.assign(in.v.size(), T(7));
  if (tiled)
    cpu::attention_backward_tiles(r.dq.data(), r.dk.data(), r.dv.data(), in.dout.data(),
                                  r.out.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(),
                                  s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);
  else
    cpu::attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), in.dout.data(), r.out.data(),
                            r.lse.data(), in.q.data(), in.k.data(), in.v.data(), s.B, s.Tq, s.Tk,
                            s.Hq, s.Hkv, s.hd);
  return r;
}

template <typename T>
void expect_close(const std::string& what, const std::vector<T>& expected,
                  const std::vector<T>& actual, double tolerance) {
  ASSERT_EQ(expected.size(), actual.size()) << what;
  int failures = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const double e = expected[i], a = actual[i];
    if (!(std::abs(e - a) <= tolerance * std::max(1.0, std::abs(e))) && ++failures <= 5)
      ADD_FAILURE() << what << "[" << i << "]: reference " << e << ", tiled " << a;
  }
}

template <typename T>
void compare(const Shape& s, std::uint64_t seed, double tolerance) {
  const Inputs<T> in = make_inputs<T>(s, seed);
  const Results<T> ref = run(s, in, false), tiled = run(s, in, true);
  expect_close("out", ref.out, tiled.out, tolerance);
  expect_close("lse", ref.lse, tiled.lse, tolerance);
  expect_close("dq", ref.dq, tiled.dq, tolerance);
  expect_close("dk", ref.dk, tiled.dk, tolerance);
  expect_close("dv", ref.dv, tiled.dv, tolerance);
}

class AttentionTiles : public ::testing::TestWithParam<Shape> {};

// Double: both paths sum at most a few hundred O(1) products in a different order, so they
// agree to ~1e-14; 1e-11 is a wide margin that any wrong mask, scale or index would miss by far.
TEST_P(AttentionTiles, MatchesReferenceInDouble) { compare<double>(GetParam(), 10, 1e-11); }

// Float: the same sums rounded at 2^-24 per term, over up to ~200 keys and with exp
// amplifying score errors of ~1e-6 by the score range (~8): 1e-4 relative is about 20x the
// worst disagreement seen and still far below any real error (>1e-2).
TEST_P(AttentionTiles, MatchesReferenceInFloat) { compare<float>(GetParam(), 20, 1e-4); }

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionTiles,
    ::testing::Values(Shape{1, 1, 1, 1, 1, 4},       // a single token
                      Shape{2, 5, 5, 4, 2, 8},       // one partial tile, GQA
                      Shape{1, 64, 64, 2, 1, 16},    // exactly one tile
                      Shape{2, 150, 150, 4, 2, 32},  // two full tiles and a partial one
                      Shape{1, 70, 200, 3, 1, 8},    // queries after a cache, two tiles
                      Shape{1, 1, 9, 6, 3, 4}),      // one new query over a cache
    [](const auto& info) {
      const Shape& s = info.param;
      return str("B", s.B, "Tq", s.Tq, "Tk", s.Tk, "Hq", s.Hq, "Hkv", s.Hkv, "hd", s.hd);
    });

TEST(AttentionTiles, IsBitwiseDeterministicAcrossThreadCounts) {
  const Shape s{2, 130, 130, 4, 2, 32};  // above the parallel threshold, three tiles
  const Inputs<float> in = make_inputs<float>(s, 30);
  const int saved_threads = omp_get_max_threads();
  std::vector<Results<float>> results;
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    results.push_back(run(s, in, true));
  }
  omp_set_num_threads(saved_threads);
  auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(results[0].out, results[1].out));
  EXPECT_TRUE(same(results[0].lse, results[1].lse));
  EXPECT_TRUE(same(results[0].dq, results[1].dq));
  EXPECT_TRUE(same(results[0].dk, results[1].dk));
  EXPECT_TRUE(same(results[0].dv, results[1].dv));
}

}  // namespace
}  // namespace minitron
