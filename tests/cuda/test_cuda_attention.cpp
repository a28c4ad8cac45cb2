// Emulated CUDA attention (tiled forward, recomputing backward) vs the CPU reference.
// Shapes: sequence 1; sequences that are not multiples of the 16-row query tiles or the 32-key
// tiles; several query heads per KV head (group 2 and 3) and none; head_dim 16, 32, 64 and 128
// (fp32 tiles of 128 need the >48 KiB shared-memory opt-in); a KV-cache forward (Tk > Tq).
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "kernels/attention.h"
#include "tests/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

struct Shape {
  std::int64_t B, Tq, Tk, Hq, Hkv, hd;
};

class CudaAttention : public ::testing::TestWithParam<std::tuple<DType, Shape>> {
 protected:
  Device dev;
};

TEST_P(CudaAttention, ForwardAndBackward) {
  const auto [dt, s] = GetParam();
  const std::int64_t qn = s.B * s.Tq * s.Hq * s.hd, kvn = s.B * s.Tk * s.Hkv * s.hd;
  const std::int64_t stats = s.B * s.Hq * s.Tq;
  const auto q = stored(random_floats(qn, 51, -1, 1), dt);
  const auto k = stored(random_floats(kvn, 52, -1, 1), dt);
  const auto v = stored(random_floats(kvn, 53, -1, 1), dt);
  auto tq = dev.put(q, dt), tk = dev.put(k, dt), tv = dev.put(v, dt);
  auto tout = dev.poisoned(qn, dt), tlse = dev.poisoned(stats, DType::F32);
  dev.backend().attention_forward(tout, tlse, tq, tk, tv, s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);

  std::vector<float> out(qn), lse(stats);
  cpu::attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk,
                         s.Hq, s.Hkv, s.hd);
  // Both sides compute in fp32 (exp2 of prescaled scores vs exp: a few ulps per probability);
  // out is a convex combination of |v| <= 1, so fp32 differences stay ~1e-6. bf16 runs the
  // tensor-core kernel, which rounds P to bf16 for the PV product (each weight off by 2^-9 of
  // itself, so out by at most 2^-9 * max|v|, absolute), then rounds the output once.
  const bool bf16 = dt == DType::BF16;
  expect_near_all("attention out", dev.get(tout), out, bf16 ? kBf16Ulp : 1e-5, bf16 ? kBf16Ulp / 2 : 2e-6);
  // lse = max + log(sum) ~ log(Tk) <= 4: fp32 ulps of that plus the exp differences.
  expect_near_all("attention lse", dev.get(tlse), lse, 1e-6, 1e-5);

  if (s.Tq != s.Tk) return;  // the backward serves training, where Tq == Tk
  const auto out_used = dev.get(tout);  // both backwards read the same forward output
  const auto dout = stored(random_floats(qn, 54, -1, 1), dt);
  auto tdout = dev.put(dout, dt), tused = dev.put(out_used, dt), tlse_ref = dev.put(lse, DType::F32);
  auto tdq = dev.poisoned(qn, dt), tdk = dev.poisoned(kvn, dt), tdv = dev.poisoned(kvn, dt);
  dev.backend().attention_backward(tdq, tdk, tdv, tdout, tused, tlse_ref, tq, tk, tv, s.B, s.Tq,
                                   s.Hq, s.Hkv, s.hd);
  std::vector<float> dq(qn), dk(kvn), dv(kvn);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out_used.data(), lse.data(),
                          q.data(), k.data(), v.data(), s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);
  // Gradients are fp32 sums over at most group * T <= 150 products of O(1) values on both
  // sides, each product good to a few 2^-24: ~1e-5 absolute; bf16 adds one output rounding.
  const double rel = bf16 ? kBf16Ulp : 1e-5, abs = bf16 ? 1e-4 : 2e-5;
  expect_near_all("attention dq", dev.get(tdq), dq, rel, abs);
  expect_near_all("attention dk", dev.get(tdk), dk, rel, abs);
  expect_near_all("attention dv", dev.get(tdv), dv, rel, abs);
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
