// Emulated CUDA attention (tiled forward, recomputing backward) vs the CPU reference.
// Shapes: sequence 1; sequences that are not multiples of the 16-row query tiles or the 32- and
// 64-key tiles; several query heads per KV head (group 2 and 3) and none; head_dim 16, 32, 64
// and 128 (fp32 tiles of 128 need the >48 KiB shared-memory opt-in); a KV-cache forward (Tk > Tq).
// bf16 runs the tensor-core kernels (attention_forward_mma.cuh, attention_backward_mma.cuh); their
// backward has its own suites (below, and test_cuda_attention_backward.cpp for its 128-row blocks,
// row strides and packed documents).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/attention.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

struct Shape {
  std::int64_t B, Tq, Tk, Hq, Hkv, hd;
};

// The tensor-core backward rounds P and dS to bf16 (relative error <= 2^-8 each) before they
// multiply dO, Q or K, so each gradient element may move by 2^-8 of the sum of the absolute
// values of its terms: dV_jd by 2^-8 sum_i P_ij |dO_id|, dK_jd by 2^-8 scale sum_i |dS_ij| |q_id|,
// dQ_id by 2^-8 scale sum_j |dS_ij| |k_jd|. This computes those sums (naively, in double, from
// the reference lse) and checks every element against them.
void expect_bf16_backward(const std::vector<float>& got_dq, const std::vector<float>& got_dk,
                          const std::vector<float>& got_dv, const std::vector<float>& dq,
                          const std::vector<float>& dk, const std::vector<float>& dv,
                          const std::vector<float>& q, const std::vector<float>& k,
                          const std::vector<float>& v, const std::vector<float>& dout,
                          const std::vector<float>& out, const std::vector<float>& lse,
                          const Shape& s) {
  const std::int64_t T = s.Tq, hd = s.hd, group = s.Hq / s.Hkv;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  std::vector<double> mag_q(dq.size(), 0.0), mag_k(dk.size(), 0.0), mag_v(dv.size(), 0.0);
  auto qi = [&](std::int64_t b, std::int64_t t, std::int64_t h) {
    return ((b * T + t) * s.Hq + h) * hd;
  };
  auto ki = [&](std::int64_t b, std::int64_t t, std::int64_t h) {
    return ((b * T + t) * s.Hkv + h) * hd;
  };
  for (std::int64_t b = 0; b < s.B; ++b)
    for (std::int64_t h = 0; h < s.Hq; ++h)
      for (std::int64_t i = 0; i < T; ++i) {
        const std::int64_t iq = qi(b, i, h);
        double D = 0;
        for (std::int64_t d = 0; d < hd; ++d) D += static_cast<double>(dout[iq + d]) * out[iq + d];
        for (std::int64_t j = 0; j <= i; ++j) {
          const std::int64_t jk = ki(b, j, h / group);
          double score = 0, dp = 0;
          for (std::int64_t d = 0; d < hd; ++d) {
            score += static_cast<double>(q[iq + d]) * k[jk + d];
            dp += static_cast<double>(dout[iq + d]) * v[jk + d];
          }
          const double p = std::exp(score * scale - lse[(b * s.Hq + h) * T + i]);
          const double ds = std::abs(p * (dp - D)) * scale;
          for (std::int64_t d = 0; d < hd; ++d) {
            mag_v[jk + d] += p * std::abs(dout[iq + d]);
            mag_k[jk + d] += ds * std::abs(q[iq + d]);
            mag_q[iq + d] += ds * std::abs(k[jk + d]);
          }
        }
      }
  // Per element: the 2^-8 bf16 rounding of P or dS over the term sums (with 1% slack for the
  // fp32 exp and summation-order differences, each ~1e-6 of those sums), one bf16 rounding of
  // the output (half an ulp, 2^-9 of it; a full 2^-8 covers the reference's own fp32 noise),
  // and 1e-6 absolute for elements whose terms all but cancel.
  auto bounds = [](const std::vector<double>& mag, const std::vector<float>& want) {
    std::vector<double> bound(want.size());
    for (std::size_t e = 0; e < want.size(); ++e)
      bound[e] = 1.01 * kBf16Ulp * mag[e] + kBf16Ulp * std::abs(want[e]) + 1e-6;
    return bound;
  };
  expect_within("attention dq", got_dq, dq, bounds(mag_q, dq));
  expect_within("attention dk", got_dk, dk, bounds(mag_k, dk));
  expect_within("attention dv", got_dv, dv, bounds(mag_v, dv));
}

// `host` at element `offset` of a larger device buffer: offset 1 puts every row off its 16-byte
// boundary, so the kernels must take the element-wise tile fill (the emulator aborts on a
// misaligned 16-byte load, as a GPU faults).
struct Placed {
  BackendBuffer buffer;
  Tensor view;
};
Placed place(Device& dev, const std::vector<float>& host, DType dt, std::int64_t offset) {
  std::vector<float> all(host.size() + static_cast<std::size_t>(offset), 0.0f);
  std::copy(host.begin(), host.end(), all.begin() + offset);
  Placed p{dev.put(all, dt), Tensor{}};
  p.view = p.buffer.tensor().slice(offset, static_cast<std::int64_t>(host.size()));
  return p;
}

// The forward, then (for Tq == Tk, unless `backward` is false) the backward, against the CPU
// reference; inputs at `offset`, the outputs out, dq, dk, dv (NaN-poisoned) at `out_offset`.
void check_forward_and_backward(Device& dev, DType dt, const Shape& s, std::int64_t offset,
                                bool backward = true, std::int64_t out_offset = 0) {
  const auto poisoned_at = [&](std::int64_t n) {
    return place(
        dev,
        std::vector<float>(static_cast<std::size_t>(n), std::numeric_limits<float>::quiet_NaN()),
        dt, out_offset);
  };
  const std::int64_t qn = s.B * s.Tq * s.Hq * s.hd, kvn = s.B * s.Tk * s.Hkv * s.hd;
  const std::int64_t stats = s.B * s.Hq * s.Tq;
  const auto q = stored(random_floats(qn, 51, -1, 1), dt);
  const auto k = stored(random_floats(kvn, 52, -1, 1), dt);
  const auto v = stored(random_floats(kvn, 53, -1, 1), dt);
  const Placed tq = place(dev, q, dt, offset), tk = place(dev, k, dt, offset),
               tv = place(dev, v, dt, offset);
  const Placed placed_out = poisoned_at(qn);
  const Tensor& tout = placed_out.view;
  auto tlse = dev.poisoned(stats, DType::F32);
  dev.backend().attention_forward(tout, tlse, tq.view, tk.view, tv.view, s.B, s.Tq, s.Tk, s.Hq,
                                  s.Hkv, s.hd);

  std::vector<float> out(qn), lse(stats);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk,
                         s.Hq, s.Hkv, s.hd);
  // Both sides compute in fp32 (exp2 of prescaled scores vs exp: a few ulps per probability);
  // out is a convex combination of |v| <= 1, so fp32 differences stay ~1e-6. bf16 runs the
  // tensor-core kernel, which rounds P to bf16 for the PV product (each weight off by up to 2^-8
  // of itself, so out by at most 2^-8 * max|v|, absolute), then rounds the output once.
  const bool bf16 = dt == DType::BF16;
  expect_near_all("attention out", dev.get(tout), out, bf16 ? kBf16Ulp : 1e-5,
                  bf16 ? kBf16Ulp : 2e-6);
  // lse = max + log(sum) ~ log(Tk) <= 4: fp32 ulps of that plus the exp differences.
  expect_near_all("attention lse", dev.get(tlse), lse, 1e-6, 1e-5);

  if (s.Tq != s.Tk || !backward) return;  // the backward serves training, where Tq == Tk
  const auto out_used = dev.get(tout);    // both backwards read the same forward output
  const auto dout = stored(random_floats(qn, 54, -1, 1), dt);
  const Placed tdout = place(dev, dout, dt, offset);
  auto tused = dev.put(out_used, dt), tlse_ref = dev.put(lse, DType::F32);
  const Placed placed_dq = poisoned_at(qn), placed_dk = poisoned_at(kvn),
               placed_dv = poisoned_at(kvn);
  const Tensor &tdq = placed_dq.view, &tdk = placed_dk.view, &tdv = placed_dv.view;
  dev.backend().attention_backward(tdq, tdk, tdv, tdout.view, tused, tlse_ref, tq.view, tk.view,
                                   tv.view, s.B, s.Tq, s.Hq, s.Hkv, s.hd);
  std::vector<float> dq(qn), dk(kvn), dv(kvn);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out_used.data(), lse.data(),
                          q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);
  if (dt == DType::BF16) {
    expect_bf16_backward(dev.get(tdq), dev.get(tdk), dev.get(tdv), dq, dk, dv, q, k, v, dout,
                         out_used, lse, s);
    return;
  }
  // Gradients are fp32 sums over at most group * T <= 150 products of O(1) values on both
  // sides, each product good to a few 2^-24: ~1e-5 absolute.
  expect_near_all("attention dq", dev.get(tdq), dq, 1e-5, 2e-5);
  expect_near_all("attention dk", dev.get(tdk), dk, 1e-5, 2e-5);
  expect_near_all("attention dv", dev.get(tdv), dv, 1e-5, 2e-5);
}

class CudaAttention : public ::testing::TestWithParam<std::tuple<DType, Shape>> {
 protected:
  Device dev;
};

TEST_P(CudaAttention, ForwardAndBackward) {
  const auto [dt, s] = GetParam();
  check_forward_and_backward(dev, dt, s, 0);
}

TEST(CudaAttentionMisaligned, UnalignedInputsTakeTheElementwiseFill) {
  Device dev;
  for (DType dt : {DType::F32, DType::BF16}) {
    SCOPED_TRACE(dtype_label(dt));
    check_forward_and_backward(dev, dt, Shape{2, 37, 37, 4, 2, 64}, 1);
  }
}

// Aligned inputs with outputs off their 16-byte boundary: the tensor-core kernels' 16-byte
// output stores (staged through shared memory) must give way to element stores.
TEST(CudaAttentionMisaligned, UnalignedOutputsTakeTheElementwiseStore) {
  Device dev;
  check_forward_and_backward(dev, DType::BF16, Shape{2, 37, 37, 4, 2, 64}, 0, true, 1);
}

const Shape kShapes[] = {
    {2, 37, 37, 4, 2, 64},   // two query tiles and a partial third, group of 2, two batches
    {1, 1, 1, 2, 1, 128},    // sequence 1, head_dim 128
    {1, 50, 50, 6, 2, 32},   // group of 3, two key tiles
    {1, 20, 20, 2, 2, 16},   // no grouping, small heads
    {1, 5, 21, 3, 1, 64},    // KV cache: 5 new queries over 21 keys (forward only)
    {1, 33, 33, 2, 1, 128},  // head_dim 128 over two key tiles and a partial query tile
};

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention,
                         ::testing::Combine(::testing::Values(DType::F32, DType::BF16),
                                            ::testing::ValuesIn(kShapes)),
                         [](const auto& info) {
                           const Shape& s = std::get<1>(info.param);
                           return str(dtype_label(std::get<0>(info.param)), "_B", s.B, "_Tq", s.Tq,
                                      "_Tk", s.Tk, "_Hq", s.Hq, "_Hkv", s.Hkv, "_hd", s.hd);
                         });

// The bf16 tensor-core forward alone, over more than one of its key tiles (64 keys at head_dim
// 64, 32 at 128): a last tile cut short by the sequence, tiles wholly below the diagonal (which
// skip the mask), query blocks with rows past the sequence, a KV cache whose queries see every
// key of the early tiles, one whose last query sees a single key of a tile.
// test_cuda_attention_forward_mma.cpp has the forward's own suite.
class CudaAttentionBf16Forward : public ::testing::TestWithParam<Shape> {
 protected:
  Device dev;
};

TEST_P(CudaAttentionBf16Forward, MatchesReferenceWithinRoundingOfP) {
  check_forward_and_backward(dev, DType::BF16, GetParam(), 0, /*backward=*/false);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CudaAttentionBf16Forward,
    ::testing::Values(Shape{2, 130, 130, 2, 1, 128},  // three key tiles, the last of 2 keys
                      Shape{1, 128, 128, 3, 3, 64},   // whole tiles only, no grouping
                      Shape{1, 7, 150, 4, 2, 64},     // KV cache: two unmasked tiles, a cut third
                      Shape{1, 1, 70, 2, 1, 128},     // one query over 70 keys
                      // KV cache whose last query (row 15, the end of warp 0's first slice)
                      // sees key 15 + 49 = 64, the first of the second tile, and no further one
                      Shape{1, 16, 65, 2, 1, 64}),
    [](const auto& info) {
      const Shape& s = info.param;
      return str("B", s.B, "_Tq", s.Tq, "_Tk", s.Tk, "_Hq", s.Hq, "_Hkv", s.Hkv, "_hd", s.hd);
    });

// The bf16 tensor-core backward alone (Tq == Tk), two batches with NaN-poisoned outputs:
// sequences that are not multiples of the 128-row blocks, the 32-row warps or the 16- and 32-row
// tiles (1, 20, 37, 77), KV groups of 4 and 2, head_dim 64 and 128 and once each 16, 32 and 96.
class CudaAttentionBf16Backward : public ::testing::TestWithParam<Shape> {
 protected:
  Device dev;
};

TEST_P(CudaAttentionBf16Backward, MatchesReferenceWithinRoundingOfPAndDs) {
  const Shape s = GetParam();
  const DType dt = DType::BF16;
  const std::int64_t qn = s.B * s.Tq * s.Hq * s.hd, kvn = s.B * s.Tk * s.Hkv * s.hd;
  const std::int64_t stats = s.B * s.Hq * s.Tq;
  const auto q = stored(random_floats(qn, 61, -1, 1), dt);
  const auto k = stored(random_floats(kvn, 62, -1, 1), dt);
  const auto v = stored(random_floats(kvn, 63, -1, 1), dt);
  const auto dout = stored(random_floats(qn, 64, -1, 1), dt);
  std::vector<float> out(qn), lse(stats);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk,
                         s.Hq, s.Hkv, s.hd);
  const auto out_used = stored(out, dt);  // what a bf16 forward would have stored
  std::vector<float> dq(qn), dk(kvn), dv(kvn);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out_used.data(), lse.data(),
                          q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);

  auto tq = dev.put(q, dt), tk = dev.put(k, dt), tv = dev.put(v, dt);
  auto tdout = dev.put(dout, dt), tout = dev.put(out_used, dt), tlse = dev.put(lse, DType::F32);
  auto tdq = dev.poisoned(qn, dt), tdk = dev.poisoned(kvn, dt), tdv = dev.poisoned(kvn, dt);
  dev.backend().attention_backward(tdq, tdk, tdv, tdout, tout, tlse, tq, tk, tv, s.B, s.Tq, s.Hq,
                                   s.Hkv, s.hd);
  expect_bf16_backward(dev.get(tdq), dev.get(tdk), dev.get(tdv), dq, dk, dv, q, k, v, dout,
                       out_used, lse, s);
}

const Shape kBackwardShapes[] = {
    {2, 77, 77, 4, 1, 128},  // a partial 128-key block, three query tiles, group 4
    {2, 77, 77, 4, 2, 64},   // group 2
    {2, 20, 20, 4, 2, 128},  // one partial block and tile
    {2, 1, 1, 4, 1, 64},     // sequence 1
    {2, 77, 77, 4, 2, 16},  {2, 20, 20, 4, 1, 32},
    {2, 37, 37, 4, 2, 96},  // one partial key block, two query tiles (kept short: slow under TSan)
};

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttentionBf16Backward, ::testing::ValuesIn(kBackwardShapes),
                         [](const auto& info) {
                           const Shape& s = info.param;
                           return str("B", s.B, "_T", s.Tq, "_Hq", s.Hq, "_Hkv", s.Hkv, "_hd",
                                      s.hd);
                         });

TEST(CudaAttentionErrors, UnsupportedHeadDimIsAClearError) {
  Device dev;
  auto t = dev.poisoned(1 * 2 * 1 * 48, DType::BF16);
  auto lse = dev.poisoned(2, DType::F32);
  try {
    dev.backend().attention_forward(t, lse, t, t, t, 1, 2, 2, 1, 1, 48);
    FAIL() << "head_dim 48 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim 48"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace minitron::test
