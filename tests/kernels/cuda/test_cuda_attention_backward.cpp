// The bf16 tensor-core attention backward (kernels/attention_backward_mma.cuh) through the public
// launcher with row strides, against the CPU reference (kernels/attention.h): head_dim 64 and 128;
// sequences of 1 and not a multiple of any tile or block (37, 77, 129, 200); 32 query heads over 8
// KV heads and a group of 8; packed documents, one starting on the last key of a 32-key tile and of
// a 128-key block; q, k, v as views into one fused QKV buffer and dq, dk, dv into one fused
// gradient buffer (row stride (Hq + 2 Hkv) hd plus a gap that must stay untouched), out and dout
// with wider rows, every tensor in its own buffer with a different row stride, rows off their
// 16-byte boundary and strides that are not whole 16-byte packs (the element-wise paths); two runs
// bit-identical.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/attention.cuh"
#include "kernels/attention.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

using Bf16 = __nv_bfloat16;

// How the tensors lie in memory.
enum class Layout {
  separate,  // one buffer each, today's strides (Hq hd, Hkv hd)
  padded,    // one buffer each, every row stride wider than its rows by a different gap
  fused,     // q, k, v in one buffer, dq, dk, dv in another, rows (Hq + 2 Hkv) hd + 8 (a gap)
  offset,    // fused, every base one element past a 16-byte boundary: element-wise tiles
  odd,       // fused with rows (Hq + 2 Hkv) hd + 3: most rows off their 16-byte boundary
};
const char* layout_label(Layout l) {
  switch (l) {
    case Layout::separate: return "separate";
    case Layout::padded: return "padded";
    case Layout::fused: return "fused";
    case Layout::offset: return "offset";
    case Layout::odd: return "odd";
  }
  return "?";
}

struct Case {
  std::int64_t B, T, Hq, Hkv, hd;
  Layout layout;
  std::vector<std::vector<std::int64_t>> documents;  // per batch row; empty: no packing
};

// Inputs rounded to bf16 (what the kernels see), the CPU forward's out (rounded: what a bf16
// forward stores) and lse, positions, and the CPU reference gradients.
struct Problem {
  std::vector<float> q, k, v, dout, out, lse, dq, dk, dv;
  std::vector<std::int32_t> positions;
};

Problem make_problem(const Case& c) {
  Problem p;
  const std::int64_t qn = c.B * c.T * c.Hq * c.hd, kvn = c.B * c.T * c.Hkv * c.hd;
  p.q = stored(random_floats(qn, 71, -1, 1), DType::BF16);
  p.k = stored(random_floats(kvn, 72, -1, 1), DType::BF16);
  p.v = stored(random_floats(kvn, 73, -1, 1), DType::BF16);
  p.dout = stored(random_floats(qn, 74, -1, 1), DType::BF16);
  for (const auto& row : c.documents)
    for (std::int64_t length : row)
      for (std::int64_t i = 0; i < length; ++i) p.positions.push_back(static_cast<std::int32_t>(i));
  const std::int32_t* pos = p.positions.empty() ? nullptr : p.positions.data();
  p.out.resize(qn);
  p.lse.resize(c.B * c.Hq * c.T);
  cpu::attention_forward(p.out.data(), p.lse.data(), p.q.data(), p.k.data(), p.v.data(), c.B, c.T,
                         c.T, c.Hq, c.Hkv, c.hd, pos);
  p.out = stored(p.out, DType::BF16);
  p.dq.resize(qn);
  p.dk.resize(kvn);
  p.dv.resize(kvn);
  cpu::attention_backward(p.dq.data(), p.dk.data(), p.dv.data(), p.dout.data(), p.out.data(),
                          p.lse.data(), p.q.data(), p.k.data(), p.v.data(), c.B, c.T, c.T, c.Hq,
                          c.Hkv, c.hd, pos);
  return p;
}

// One run's gradients, unpacked to [B*T, H*hd] floats, and the raw bits of every output buffer
// (the determinism check compares them whole, gaps included).
struct BackwardRun {
  std::vector<float> dq, dk, dv;
  std::vector<std::uint16_t> bits;
  bool gaps_untouched = true;
};

constexpr std::uint16_t kGapBits = 0x7fc1;  // a NaN no kernel computes: a write shows

BackwardRun run_backward(const Case& c, const Problem& p) {
  const std::int64_t N = c.B * c.T, Hq = c.Hq, Hkv = c.Hkv, hd = c.hd;
  const bool fused = c.layout != Layout::separate && c.layout != Layout::padded;
  const std::int64_t base = c.layout == Layout::offset ? 1 : 0;
  const std::int64_t pad = c.layout == Layout::odd ? 3 : 8;
  // Row strides: fused rows hold a head block of q, k, v (or dq, dk, dv) and a gap; out and dout
  // rows are wider than a head block, by different gaps (never read), so neither stride can stand
  // in for the other.
  const std::int64_t row = (Hq + 2 * Hkv) * hd + pad;
  AttentionStrides s{};
  if (fused) {
    s = {row, row, row, Hq * hd + pad, Hq * hd + 2 * pad, row, row, row};
  } else if (c.layout == Layout::padded) {  // 8 .. 64 more: no stride stands in for another
    s = {Hq * hd + 8,  Hkv * hd + 16, Hkv * hd + 24, Hq * hd + 32,
         Hq * hd + 40, Hq * hd + 48,  Hkv * hd + 56, Hkv * hd + 64};
  } else {
    s = {Hq * hd, Hkv * hd, Hkv * hd, Hq * hd, Hq * hd, Hq * hd, Hkv * hd, Hkv * hd};
  }
  // Buffers of bf16 bits, filled with the gap NaN, `base` elements in.
  auto buffer = [&](std::int64_t elements) {
    return std::vector<Bf16>(static_cast<std::size_t>(elements + base + 16),
                             __ushort_as_bfloat16(kGapBits));
  };
  auto scatter = [&](std::vector<Bf16>& dst, const std::vector<float>& src, std::int64_t column,
                     std::int64_t stride, std::int64_t width) {
    for (std::int64_t r = 0; r < N; ++r)
      for (std::int64_t e = 0; e < width; ++e)
        dst[base + r * stride + column + e] = __float2bfloat16(src[r * width + e]);
  };
  auto gather = [&](const std::vector<Bf16>& src, std::int64_t column, std::int64_t stride,
                    std::int64_t width) {
    std::vector<float> out(static_cast<std::size_t>(N * width));
    for (std::int64_t r = 0; r < N; ++r)
      for (std::int64_t e = 0; e < width; ++e)
        out[r * width + e] = __bfloat162float(src[base + r * stride + column + e]);
    return out;
  };

  std::vector<Bf16> qkv = buffer(fused ? N * row : N * s.q);
  std::vector<Bf16> k_own, v_own, dk_own, dv_own;
  std::vector<Bf16> grads = buffer(fused ? N * row : N * s.dq);
  std::vector<Bf16> out = buffer(N * s.out), dout = buffer(N * s.dout);
  Bf16 *q_at = qkv.data() + base, *k_at, *v_at, *dq_at = grads.data() + base, *dk_at, *dv_at;
  const std::int64_t k_col = fused ? Hq * hd : 0, v_col = fused ? (Hq + Hkv) * hd : 0;
  scatter(qkv, p.q, 0, s.q, Hq * hd);
  if (fused) {
    scatter(qkv, p.k, k_col, s.k, Hkv * hd);
    scatter(qkv, p.v, v_col, s.v, Hkv * hd);
    k_at = q_at + k_col;
    v_at = q_at + v_col;
    dk_at = dq_at + k_col;
    dv_at = dq_at + v_col;
  } else {
    k_own = buffer(N * s.k);
    v_own = buffer(N * s.v);
    dk_own = buffer(N * s.dk);
    dv_own = buffer(N * s.dv);
    scatter(k_own, p.k, 0, s.k, Hkv * hd);
    scatter(v_own, p.v, 0, s.v, Hkv * hd);
    k_at = k_own.data() + base;
    v_at = v_own.data() + base;
    dk_at = dk_own.data() + base;
    dv_at = dv_own.data() + base;
  }
  scatter(out, p.out, 0, s.out, Hq * hd);
  scatter(dout, p.dout, 0, s.dout, Hq * hd);
  std::vector<float> workspace(static_cast<std::size_t>(c.B * Hq * c.T),
                               std::numeric_limits<float>::quiet_NaN());
  const std::int32_t* pos = p.positions.empty() ? nullptr : p.positions.data();
  cuda::attention_backward<Bf16>(dq_at, dk_at, dv_at, dout.data() + base, out.data() + base,
                                 p.lse.data(), q_at, k_at, v_at, c.B, c.T, Hq, Hkv, hd,
                                 workspace.data(), nullptr, pos, s);

  BackwardRun r;
  r.dq = gather(grads, 0, s.dq, Hq * hd);
  r.dk = fused ? gather(grads, k_col, s.dk, Hkv * hd) : gather(dk_own, 0, s.dk, Hkv * hd);
  r.dv = fused ? gather(grads, v_col, s.dv, Hkv * hd) : gather(dv_own, 0, s.dv, Hkv * hd);
  const std::vector<Bf16>* outputs[] = {&grads, &dk_own, &dv_own};
  for (const auto* o : outputs)
    for (const Bf16& x : *o) r.bits.push_back(__bfloat16_as_ushort(x));
  // Every element of an output buffer outside its rows' data (the gap after each row, the
  // elements before and after the rows) keeps the gap NaN.
  auto check_gaps = [&](const std::vector<Bf16>& buf, std::int64_t used, std::int64_t stride) {
    for (std::int64_t e = 0; e < static_cast<std::int64_t>(buf.size()); ++e) {
      const std::int64_t at = e - base;
      const bool data = at >= 0 && at < N * stride && at % stride < used;
      if (!data) r.gaps_untouched &= __bfloat16_as_ushort(buf[e]) == kGapBits;
    }
  };
  if (fused) {
    check_gaps(grads, (Hq + 2 * Hkv) * hd, row);
  } else {
    check_gaps(grads, Hq * hd, s.dq);
    check_gaps(dk_own, Hkv * hd, s.dk);
    check_gaps(dv_own, Hkv * hd, s.dv);
  }
  return r;
}

// The kernels round P and dS to bf16 (relative error <= 2^-8 each) before they multiply dO, Q or
// K, so a gradient element may move by 2^-8 of the sum of the absolute values of its terms (see
// the header of attention_backward_mma.cuh); this computes those sums in double from the
// reference lse, each query over its own document's keys only.
void expect_gradients(const BackwardRun& got, const Case& c, const Problem& p) {
  const std::int64_t T = c.T, hd = c.hd, group = c.Hq / c.Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> mag_q(p.dq.size(), 0.0), mag_k(p.dk.size(), 0.0), mag_v(p.dv.size(), 0.0);
  for (std::int64_t b = 0; b < c.B; ++b)
    for (std::int64_t h = 0; h < c.Hq; ++h)
      for (std::int64_t i = 0; i < T; ++i) {
        const std::int64_t iq = ((b * T + i) * c.Hq + h) * hd;
        const std::int64_t first = p.positions.empty() ? 0 : i - p.positions[b * T + i];
        double D = 0;
        for (std::int64_t d = 0; d < hd; ++d)
          D += static_cast<double>(p.dout[iq + d]) * p.out[iq + d];
        for (std::int64_t j = first; j <= i; ++j) {
          const std::int64_t jk = ((b * T + j) * c.Hkv + h / group) * hd;
          double score = 0, dp = 0;
          for (std::int64_t d = 0; d < hd; ++d) {
            score += static_cast<double>(p.q[iq + d]) * p.k[jk + d];
            dp += static_cast<double>(p.dout[iq + d]) * p.v[jk + d];
          }
          const double prob = std::exp(score * scale - p.lse[(b * c.Hq + h) * T + i]);
          const double ds = std::abs(prob * (dp - D)) * scale;
          for (std::int64_t d = 0; d < hd; ++d) {
            mag_v[jk + d] += prob * std::abs(p.dout[iq + d]);
            mag_k[jk + d] += ds * std::abs(p.q[iq + d]);
            mag_q[iq + d] += ds * std::abs(p.k[jk + d]);
          }
        }
      }
  // Per element: 2^-8 of the term sums (1% slack for the fp32 exp and summation-order
  // differences, ~1e-6 of those sums), one bf16 rounding of the output (a full 2^-8 of it covers
  // the reference's own fp32 noise too), and 1e-6 absolute for terms that all but cancel.
  auto bounds = [](const std::vector<double>& mag, const std::vector<float>& want) {
    std::vector<double> bound(want.size());
    for (std::size_t e = 0; e < want.size(); ++e)
      bound[e] = 1.01 * kBf16Ulp * mag[e] + kBf16Ulp * std::abs(want[e]) + 1e-6;
    return bound;
  };
  expect_within("dq", got.dq, p.dq, bounds(mag_q, p.dq));
  expect_within("dk", got.dk, p.dk, bounds(mag_k, p.dk));
  expect_within("dv", got.dv, p.dv, bounds(mag_v, p.dv));
}

class CudaAttentionBackwardMma : public ::testing::TestWithParam<Case> {};

TEST_P(CudaAttentionBackwardMma, MatchesReferenceAndLeavesGapsAlone) {
  const Case& c = GetParam();
  const Problem p = make_problem(c);
  const BackwardRun r = run_backward(c, p);
  expect_gradients(r, c, p);
  EXPECT_TRUE(r.gaps_untouched) << "a kernel wrote outside the rows of dq, dk or dv";
}

// Every gradient element is summed by one lane in a fixed order (no atomics): two runs give the
// same bits, here with the emulator spreading blocks over 2 threads in whichever order they come.
TEST(CudaAttentionBackwardMmaDeterminism, TwoRunsAreBitIdentical) {
  const Case c{1, 129, 8, 2, 64, Layout::fused, {{100, 29}}};
  const Problem p = make_problem(c);
  const BackwardRun first = run_backward(c, p), second = run_backward(c, p);
  ASSERT_EQ(first.bits.size(), second.bits.size());
  EXPECT_EQ(std::memcmp(first.bits.data(), second.bits.data(), first.bits.size() * 2), 0);
}

// Keys and queries past a multiple of every tile (16- and 32-row tiles, 128-row blocks, 32-row
// warps), and the group of 8 and 32 over 8 heads.
const Case kCases[] = {
    {2, 1, 2, 1, 64, Layout::separate, {}},   // one token, two batches
    {1, 1, 8, 1, 128, Layout::fused, {}},     // one token, group of 8
    {1, 37, 4, 2, 128, Layout::fused, {}},    // a warp's second 16-row slice half full
    {2, 77, 8, 1, 64, Layout::odd, {}},       // group of 8, strides not whole packs
    {1, 129, 4, 1, 64, Layout::offset, {}},   // one key past a 128-key block, misaligned rows
    {1, 200, 2, 1, 128, Layout::padded, {}},  // two blocks, the second 72 rows
    {1, 37, 32, 8, 64, Layout::fused, {}},    // 32 query heads over 8 KV heads
    // Packed documents: starts at 0, 31 (a 32-key tile's last key), 127 (a 128-key block's and a
    // 32-key tile's last key); and a row of a 1-token document, a 16-token one and a long one.
    {2, 200, 4, 2, 64, Layout::fused, {{31, 96, 73}, {1, 16, 150, 33}}},
    {1, 200, 4, 1, 128, Layout::padded, {{31, 96, 73}}},
};

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionBackwardMma, ::testing::ValuesIn(kCases),
                         [](const auto& info) {
                           const Case& c = info.param;
                           return str("B", c.B, "_T", c.T, "_Hq", c.Hq, "_Hkv", c.Hkv, "_hd", c.hd,
                                      "_", layout_label(c.layout),
                                      c.documents.empty() ? "" : "_packed");
                         });

}  // namespace
}  // namespace minitron::test
