// Emulated CUDA backend vs the CPU references: casts, add/scale, SwiGLU, RoPE, AdamW and the
// reductions. Sizes are deliberately not multiples of the block sizes (256 threads, 16384-element
// chunks) so that tails are exercised.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/reduce.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

class CudaElementwise : public ::testing::TestWithParam<DType> {
 protected:
  Device dev;
  DType dt() const { return GetParam(); }
  // fp32 kernels and the fp32 reference differ only in the order/contraction of a few fp32
  // operations and in expf vs std::exp (both within ~2 ulp): 1e-6 relative. bf16 results are
  // rounded once on each side from such fp32 values: one bf16 ulp.
  double rel() const { return dt() == DType::BF16 ? kBf16Ulp : 1e-6; }
};

TEST_P(CudaElementwise, CopyAddScale) {
  const std::size_t n = 1001;
  const auto a = random_floats(n, 1, -3, 3), b = random_floats(n, 2, -3, 3);
  auto ta = dev.put(a, dt());
  // Copy into the other dtype and back: f32 -> bf16 rounds to nearest even exactly as the host
  // conversion does, so the comparison is exact.
  const DType other = dt() == DType::BF16 ? DType::F32 : DType::BF16;
  auto tc = dev.poisoned(n, other);
  dev.backend().copy(tc, ta);
  EXPECT_EQ(dev.get(tc), stored(stored(a, dt()), other));

  auto tb = dev.put(b, DType::F32);
  dev.backend().add_inplace(ta, tb);
  std::vector<float> want(n);
  const auto as = stored(a, dt());
  for (std::size_t i = 0; i < n; ++i) want[i] = as[i] + b[i];
  // One rounding of the exact fp32 sum into dt: exact for f32, at most half an ulp for bf16.
  expect_near_all("add_inplace", dev.get(ta), stored(want, dt()), 0, 0);

  dev.backend().scale_inplace(ta, -0.37f);
  const auto summed = stored(want, dt());
  for (std::size_t i = 0; i < n; ++i) want[i] = summed[i] * -0.37f;
  expect_near_all("scale_inplace", dev.get(ta), stored(want, dt()), 0, 0);
}

TEST_P(CudaElementwise, SwiGlu) {
  const std::size_t n = 777;
  const auto gate = stored(random_floats(n, 3, -6, 6), dt());
  const auto up = stored(random_floats(n, 4, -2, 2), dt());
  const auto dh = stored(random_floats(n, 5, -1, 1), dt());
  auto tg = dev.put(gate, dt()), tu = dev.put(up, dt()), tdh = dev.put(dh, dt());
  auto th = dev.poisoned(n, dt()), tdg = dev.poisoned(n, dt()), tdu = dev.poisoned(n, dt());
  dev.backend().swiglu_forward(th, tg, tu, n);
  dev.backend().swiglu_backward(tdg, tdu, tdh, tg, tu, n);
  std::vector<float> h(n), dg(n), du(n);
  cpu::swiglu_forward(h.data(), gate.data(), up.data(), n);
  cpu::swiglu_backward(dg.data(), du.data(), dh.data(), gate.data(), up.data(), n);
  // Each output is one fp32 expression of bf16 inputs rounded once: rel() plus a denormal floor.
  expect_near_all("swiglu h", dev.get(th), h, rel(), 1e-30);
  expect_near_all("swiglu dgate", dev.get(tdg), dg, rel(), 1e-30);
  expect_near_all("swiglu dup", dev.get(tdu), du, rel(), 1e-30);
}

TEST_P(CudaElementwise, RopePlainAndScaled) {
  const std::int64_t B = 2, T = 5, heads = 3;
  for (std::int64_t hd : {64, 128}) {
    for (bool scaled : {false, true}) {
      std::vector<float> inv_freq(hd / 2);
      for (std::int64_t i = 0; i < hd / 2; ++i) {
        inv_freq[i] = static_cast<float>(std::pow(500000.0, -2.0 * i / hd));
        // llama3 scaling divides the low frequencies by the factor (8); the kernel only reads
        // the table, so any such table checks it.
        if (scaled && i > hd / 4) inv_freq[i] /= 8.0f;
      }
      const std::size_t n = B * T * heads * hd;
      const auto x = stored(random_floats(n, 6 + hd, -2, 2), dt());
      auto tx = dev.put(x, dt());
      auto tf = dev.put(inv_freq, DType::F32);
      const std::int64_t offset = 3;
      dev.backend().rope_forward(tx, tf, B, T, heads, hd, offset);
      std::vector<float> want = x;
      cpu::rope_forward(want.data(), inv_freq.data(), B, T, heads, hd, offset);
      const std::string what = str("rope hd ", hd, scaled ? " scaled" : " plain");
      // cos/sin: fp32 (reference) vs range-reduced double (kernel), ~1e-7 apart; then one
      // rounding into dt.
      const double r = dt() == DType::BF16 ? kBf16Ulp : 1e-6;
      const auto rotated = dev.get(tx);
      expect_rope(what, rotated, want, x, hd, r);

      // Backward is the inverse rotation; apply it to the rotated values on both sides.
      dev.backend().rope_backward(tx, tf, B, T, heads, hd, offset);
      std::vector<float> back = rotated;
      cpu::rope_backward(back.data(), inv_freq.data(), B, T, heads, hd, offset);
      expect_rope(what + " backward", dev.get(tx), back, rotated, hd, r);
    }
  }
}

TEST_P(CudaElementwise, RopeLongPositions) {
  // Positions near 100k: the angle is ~1e5 radians, where the argument reduction matters.
  const std::int64_t B = 1, T = 3, heads = 1, hd = 16, offset = 131000;
  std::vector<float> inv_freq(hd / 2);
  for (std::int64_t i = 0; i < hd / 2; ++i)
    inv_freq[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / hd));
  const auto x = stored(random_floats(B * T * heads * hd, 9, -1, 1), dt());
  auto tx = dev.put(x, dt());
  auto tf = dev.put(inv_freq, DType::F32);
  dev.backend().rope_forward(tx, tf, B, T, heads, hd, offset);
  std::vector<float> want = x;
  cpu::rope_forward(want.data(), inv_freq.data(), B, T, heads, hd, offset);
  // The reference's std::cos(float) and the kernel's reduced-double cos agree to ~1e-7 however
  // large the angle (both start from the same float angle): same bounds as above.
  expect_rope("rope long positions", dev.get(tx), want, x, hd,
              dt() == DType::BF16 ? kBf16Ulp : 1e-6);
}

TEST_P(CudaElementwise, AdamW) {
  const std::size_t n = 1234;
  const auto master = random_floats(n, 10, -1, 1);
  const auto grads = random_floats(n, 11, -0.1f, 0.1f);
  const auto m0 = random_floats(n, 12, -0.01f, 0.01f);
  auto v0 = random_floats(n, 13, 0, 1e-3f);
  AdamWStep step;
  step.learning_rate = 1e-2f;
  step.weight_decay = 0.1f;
  step.step = 3;
  step.grad_scale = 0.5f;
  const bool has_master = dt() == DType::BF16;
  auto tp = dev.put(master, dt());
  BackendBuffer tmaster;
  if (has_master) tmaster = dev.put(master, DType::F32);
  auto tg = dev.put(grads, DType::F32), tm = dev.put(m0, DType::F32), tv = dev.put(v0, DType::F32);
  dev.backend().adamw_update(tp, tmaster, tg, tm, tv, step);

  std::vector<float> p = master, m = m0, v = v0;
  cpu::adamw_update(p.data(), grads.data(), m.data(), v.data(), n, step);
  // The same fp32 operations in the same order (no contraction in the host build; on a GPU nvcc
  // may fuse a multiply-add, a few ulps): 1e-6 relative, 1e-9 absolute near zero.
  expect_near_all("adamw m", dev.get(tm), m, 1e-6, 1e-12);
  expect_near_all("adamw v", dev.get(tv), v, 1e-6, 1e-15);
  if (has_master) {
    const auto got_master = dev.get(tmaster);
    expect_near_all("adamw master", got_master, p, 1e-6, 1e-9);
    // The bf16 parameters are exactly the rounded master.
    EXPECT_EQ(dev.get(tp), stored(got_master, DType::BF16));
  } else {
    expect_near_all("adamw params", dev.get(tp), p, 1e-6, 1e-9);
  }
}

TEST_P(CudaElementwise, SumOfSquares) {
  // Three 16384-element chunks and a tail.
  const std::size_t n = 3 * 16384 + 77;
  const auto x = stored(random_floats(n, 14, -2, 2), dt());
  auto tx = dev.put(x, dt());
  const double want = cpu::sum_of_squares(x.data(), static_cast<std::int64_t>(n));
  const double got = dev.backend().sum_of_squares(tx);
  // Squares of floats are exact in double; only the order of ~5e4 double additions differs:
  // relative error below n * 2^-53 ~ 6e-12.
  EXPECT_NEAR(got, want, 1e-10 * want);
  // Deterministic: a second run gives the same bits.
  EXPECT_EQ(dev.backend().sum_of_squares(tx), got);
  auto empty = dev.put({}, dt());
  EXPECT_EQ(dev.backend().sum_of_squares(empty), 0.0);
}

TEST_P(CudaElementwise, ReduceOverSequence) {
  const std::int64_t B = 3, T = 17, C = 70;
  const auto act = stored(random_floats(B * T * C, 15, -3, 3), dt());
  auto ta = dev.put(act, dt());
  for (auto reduction :
       {SequenceReduction::Mean, SequenceReduction::L2, SequenceReduction::Variance}) {
    auto out = dev.poisoned(B * C, DType::F32);
    dev.backend().reduce_over_sequence(out, ta, B, T, C, reduction);
    std::vector<float> want(B * C);
    cpu::reduce_over_sequence(want.data(), act.data(), B, T, C, reduction);
    // fp32 sums of 17 terms vs the reference's double: ~17 * 2^-24 relative.
    expect_near_all(str("reduce_over_sequence ", static_cast<int>(reduction)), dev.get(out), want,
                    1e-5, 1e-6);
  }
}

TEST_P(CudaElementwise, RowCosine) {
  const std::int64_t rows = 9, C = 300;
  auto a = stored(random_floats(rows * C, 16, -1, 1), dt());
  auto b = stored(random_floats(rows * C, 17, -1, 1), dt());
  for (std::int64_t c = 0; c < C; ++c) {
    b[c] = a[c] * 0.5f;   // row 0: parallel, cosine 1
    a[2 * C + c] = 0.0f;  // row 2: a zero row, cosine 0 by definition
  }
  b = stored(b, dt());
  auto ta = dev.put(a, dt()), tb = dev.put(b, dt());
  auto out = dev.poisoned(rows, DType::F32);
  dev.backend().row_cosine(out, ta, tb, rows, C);
  std::vector<float> want(rows);
  cpu::row_cosine(want.data(), a.data(), b.data(), rows, C);
  // fp32 block sums of 300 products vs double: ~1e-6 relative on each of three sums.
  expect_near_all("row_cosine", dev.get(out), want, 1e-5, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaElementwise, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return std::string(dtype_label(info.param)); });

}  // namespace
}  // namespace minitron::test
