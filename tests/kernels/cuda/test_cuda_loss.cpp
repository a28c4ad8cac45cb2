// Emulated CUDA losses over a chunk of logits vs the CPU reference (double sums): cross-entropy
// with ignored rows and KL divergence at three temperatures, with their in-place gradients, on
// rows that fit in shared memory and rows that do not.
// V is not a multiple of the 512 threads of a row's block.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/loss.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

class CudaLoss : public ::testing::TestWithParam<DType> {
 protected:
  Device dev;
  DType dt() const { return GetParam(); }
};

TEST_P(CudaLoss, CrossEntropy) {
  const std::int64_t rows = 5, V = 1000;
  const auto logits = stored(random_floats(rows * V, 61, -8, 8), dt());
  const std::vector<std::int32_t> targets = {3, -1, 999, 0, 512};
  auto tl = dev.put(logits, dt());
  auto tt = dev.put_i32(targets);
  auto losses = dev.poisoned(rows, DType::F32);
  const float grad_scale = 0.25f;
  dev.backend().cross_entropy(losses, tl, tt, rows, V, grad_scale);
  std::vector<float> want = logits, want_losses(rows);
  cpu::cross_entropy(want_losses.data(), want.data(), targets.data(), rows, V, grad_scale);
  // fp32 online log-sum-exp over 1000 terms vs double: the sum is good to ~log2(V) ulps, the
  // loss (~7) to ~1e-6 relative.
  expect_near_all("cross_entropy losses", dev.get(losses), want_losses, 1e-6, 1e-5);
  // Gradient grad_scale * (softmax - onehot): fp32 exp of (x - lse) with lse off by ~1e-6
  // gives ~1e-6 relative; bf16 adds one rounding. Tiny probabilities need the small floor.
  expect_near_all("cross_entropy gradient", dev.get(tl), want,
                  dt() == DType::BF16 ? kBf16Ulp : 1e-5, 1e-9);

  // Without a gradient the logits stay untouched.
  auto tl2 = dev.put(logits, dt());
  dev.backend().cross_entropy(losses, tl2, tt, rows, V, 0.0f);
  EXPECT_EQ(dev.get(tl2), logits);
  expect_near_all("cross_entropy losses (no grad)", dev.get(losses), want_losses, 1e-6, 1e-5);
}

// Llama 3's vocabulary and a bit (128259, odd, so rows start at every phase): a row is more than
// a block may keep on chip, so the kernel keeps its first slots in shared memory between the
// passes and reads the rest again; both parts, and the head and tail of a misaligned row, must
// give the reference's gradient. Row 1 targets the last logit (a tail element).
TEST_P(CudaLoss, CrossEntropyOfRowsLargerThanSharedMemory) {
  const std::int64_t rows = 3, V = 128259;
  const auto logits = stored(random_floats(rows * V, 65, -8, 8), dt());
  const std::vector<std::int32_t> targets = {5, static_cast<std::int32_t>(V - 1), 100000};
  auto tl = dev.put(logits, dt());
  auto tt = dev.put_i32(targets);
  auto losses = dev.poisoned(rows, DType::F32);
  const float grad_scale = 0.5f;
  dev.backend().cross_entropy(losses, tl, tt, rows, V, grad_scale);
  std::vector<float> want = logits, want_losses(rows);
  cpu::cross_entropy(want_losses.data(), want.data(), targets.data(), rows, V, grad_scale);
  // fp32 online log-sum-exp over 128259 terms vs double: the sum good to ~log2(V) = 17 ulps of
  // its terms' scale, the loss (~12) to ~2e-6 relative.
  expect_near_all("cross_entropy losses", dev.get(losses), want_losses, 2e-6, 1e-5);
  // exp(x - lse) with lse off by ~2e-5 absolute gives ~2e-5 relative; bf16 adds one rounding.
  // The probabilities are ~1e-5 each: the floor is far below them.
  expect_near_all("cross_entropy gradient", dev.get(tl), want,
                  dt() == DType::BF16 ? kBf16Ulp : 3e-5, 1e-12);
}

// Softmax is shift-invariant, and the kernel's log-sum-exp shifts by the row maximum: logits all
// near -1000 (exp of them underflows to 0 unshifted) give the same losses and gradients as
// logits near 0. A row maximum that took a value other than the true maximum (0 from an empty
// lane, say) would turn the sum into 0 and the loss into infinity.
TEST_P(CudaLoss, CrossEntropyOfLogitsFarBelowZero) {
  const std::int64_t rows = 3, V = 1000;
  auto logits = random_floats(rows * V, 63, -8, 8);
  for (float& x : logits) x -= 1000.0f;
  logits = stored(logits, dt());
  const std::vector<std::int32_t> targets = {7, 0, 999};
  auto tl = dev.put(logits, dt());
  auto tt = dev.put_i32(targets);
  auto losses = dev.poisoned(rows, DType::F32);
  const float grad_scale = 1.0f;
  dev.backend().cross_entropy(losses, tl, tt, rows, V, grad_scale);
  std::vector<float> want = logits, want_losses(rows);
  cpu::cross_entropy(want_losses.data(), want.data(), targets.data(), rows, V, grad_scale);
  // x - lse of two fp32 values near -1000 (ulp 6e-5): the loss (~7) to ~1e-4 absolute, and
  // exp(x - lse) to ~1e-4 relative; bf16 adds one rounding.
  expect_near_all("cross_entropy losses", dev.get(losses), want_losses, 1e-5, 2e-4);
  expect_near_all("cross_entropy gradient", dev.get(tl), want,
                  dt() == DType::BF16 ? kBf16Ulp : 2e-4, 1e-9);
}

// Masked logits (-inf, as a vocabulary mask sets them): the first 256 of each row (whole 16-byte
// packs, so some threads see nothing but -inf and must add nothing to the sum), then the first
// 250 (a pack that starts -inf and ends finite: a thread's running max is still -inf when its
// second -inf arrives, where exp(-inf - -inf) would be NaN).
TEST_P(CudaLoss, CrossEntropyWithMaskedLogits) {
  const std::int64_t rows = 2, V = 1000;
  for (const std::int64_t masked : {256, 250}) {
    auto logits = stored(random_floats(rows * V, 65, -4, 4), dt());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < masked; ++j) logits[r * V + j] = -INFINITY;
    const std::vector<std::int32_t> targets = {300, 999};
    auto tl = dev.put(logits, dt());
    auto tt = dev.put_i32(targets);
    auto losses = dev.poisoned(rows, DType::F32);
    dev.backend().cross_entropy(losses, tl, tt, rows, V, 1.0f);
    std::vector<float> want = logits, want_losses(rows);
    cpu::cross_entropy(want_losses.data(), want.data(), targets.data(), rows, V, 1.0f);
    // As in CrossEntropy: the loss to ~1e-6 relative, the gradient one rounding into dt.
    expect_near_all(str("cross_entropy losses, ", masked, " masked"), dev.get(losses), want_losses,
                    1e-6, 1e-5);
    expect_near_all(str("cross_entropy gradient, ", masked, " masked"), dev.get(tl), want,
                    dt() == DType::BF16 ? kBf16Ulp : 1e-5, 1e-9);
  }
}

// Targets on the device cannot throw: the first id past the vocabulary (V) gives a NaN loss and
// a zero gradient row (loss.cuh), a negative target loss 0 and a zero gradient row, and the
// other rows are untouched by either. The reference refuses such targets, so the expectations
// are written out.
TEST_P(CudaLoss, CrossEntropyTargetsOutsideTheVocabulary) {
  const std::int64_t rows = 3, V = 37;
  const auto logits = stored(random_floats(rows * V, 64, -3, 3), dt());
  const std::vector<std::int32_t> targets = {static_cast<std::int32_t>(V), -1, 5};
  auto tl = dev.put(logits, dt());
  auto tt = dev.put_i32(targets);
  auto losses = dev.poisoned(rows, DType::F32);
  dev.backend().cross_entropy(losses, tl, tt, rows, V, 1.0f);
  const auto got = dev.get(losses), gradient = dev.get(tl);
  EXPECT_TRUE(std::isnan(got[0])) << got[0];
  EXPECT_EQ(got[1], 0.0f);
  for (std::int64_t j = 0; j < 2 * V; ++j) EXPECT_EQ(gradient[j], 0.0f) << "element " << j;
  // Row 2 as the reference computes it alone.
  std::vector<float> want(logits.begin() + 2 * V, logits.end());
  float want_loss = 0;
  cpu::cross_entropy(&want_loss, want.data(), &targets[2], 1, V, 1.0f);
  // As in CrossEntropy: ~1e-6 relative on the loss, the gradient one rounding into dt.
  EXPECT_NEAR(got[2], want_loss, 1e-5);
  expect_near_all("cross_entropy row 2 gradient",
                  std::vector<float>(gradient.begin() + 2 * V, gradient.end()), want,
                  dt() == DType::BF16 ? kBf16Ulp : 1e-5, 1e-9);
}

// Rows longer than one pass of the block's 512 threads over 16-byte packs (2048 f32, 4096
// bf16): each thread then takes several packs, so the pack stride is exercised.
TEST_P(CudaLoss, CrossEntropyOfLongRows) {
  const std::int64_t rows = 2, V = 9000;
  const auto logits = stored(random_floats(rows * V, 66, -6, 6), dt());
  const std::vector<std::int32_t> targets = {8999, 4100};
  auto tl = dev.put(logits, dt());
  auto tt = dev.put_i32(targets);
  auto losses = dev.poisoned(rows, DType::F32);
  dev.backend().cross_entropy(losses, tl, tt, rows, V, 1.0f);
  std::vector<float> want = logits, want_losses(rows);
  cpu::cross_entropy(want_losses.data(), want.data(), targets.data(), rows, V, 1.0f);
  // fp32 log-sum-exp over 9000 terms: the loss (~9) to ~1e-6 relative, the gradient one
  // rounding into dt.
  expect_near_all("cross_entropy losses", dev.get(losses), want_losses, 1e-6, 2e-5);
  expect_near_all("cross_entropy gradient", dev.get(tl), want,
                  dt() == DType::BF16 ? kBf16Ulp : 1e-5, 1e-9);
}

// Teacher probabilities of exactly 0: a masked teacher vocabulary (-inf logits, the first 256 or
// 250 of each row; see CrossEntropyWithMaskedLogits). Their terms are 0 * log 0, which KL defines
// as 0.
TEST_P(CudaLoss, KlDivergenceWithVanishingTeacherProbabilities) {
  const std::int64_t rows = 2, V = 512;
  for (const std::int64_t masked : {256, 250}) {
    const auto student = stored(random_floats(rows * V, 73, -2, 2), dt());
    auto teacher = stored(random_floats(rows * V, 74, -2, 2), dt());
    for (std::int64_t r = 0; r < rows; ++r)
      for (std::int64_t j = 0; j < masked; ++j) teacher[r * V + j] = -INFINITY;
    auto ts = dev.put(student, dt()), tt = dev.put(teacher, dt());
    auto losses = dev.poisoned(rows, DType::F32);
    dev.backend().kl_divergence(losses, ts, tt, rows, V, 1.0f, 0.0f);
    std::vector<float> s = student, want_losses(rows);
    cpu::kl_divergence(want_losses.data(), s.data(), teacher.data(), rows, V, 1.0f, 0.0f);
    // As in KlDivergence: an fp32 sum of 512 terms each good to ~1e-6 of its size.
    expect_near_all(str("kl losses, ", masked, " masked"), dev.get(losses), want_losses, 1e-5,
                    1e-5);
  }
}

TEST_P(CudaLoss, KlDivergence) {
  const std::int64_t rows = 4, V = 777;
  for (float tau : {1.0f, 2.0f}) {
    const auto student = stored(random_floats(rows * V, 71, -4, 4), dt());
    const auto teacher = stored(random_floats(rows * V, 72, -4, 4), dt());
    auto ts = dev.put(student, dt()), tt = dev.put(teacher, dt());
    auto losses = dev.poisoned(rows, DType::F32);
    const float grad_scale = 0.5f;
    dev.backend().kl_divergence(losses, ts, tt, rows, V, tau, grad_scale);
    std::vector<float> s = student, want_losses(rows);
    cpu::kl_divergence(want_losses.data(), s.data(), teacher.data(), rows, V, tau, grad_scale);
    // KL ~ 1 here, an fp32 sum of 777 terms each good to ~1e-6 of its size: 1e-5 absolute.
    expect_near_all(str("kl losses tau ", tau), dev.get(losses), want_losses, 1e-5, 1e-5);
    // (p_s - p_t) / tau: differences of fp32 probabilities (~1e-3 each), each good to ~1e-6
    // relative, so ~1e-9 absolute; bf16 adds one rounding.
    expect_near_all(str("kl gradient tau ", tau), dev.get(ts), s,
                    dt() == DType::BF16 ? kBf16Ulp : 1e-4, 1e-8);
  }
}

// Rows of both kinds the gradient pass reads (loss.cuh, kl_divergence_kept): 20001 logits (both
// rows kept whole in shared memory, over the 48 KiB a launch gets without opting in) and Llama
// 3's vocabulary and a bit, 128259 (odd: rows start at every phase, a scalar head and tail
// around the packs; more than a block holds, so each row's first slots come from shared memory
// and the rest from global memory again). Temperature 1.5, and the loss alone (one pass).
TEST_P(CudaLoss, KlDivergenceOfRowsLargerThanSharedMemory) {
  for (const auto& [rows, V] :
       std::vector<std::pair<std::int64_t, std::int64_t>>{{2, 20001}, {3, 128259}}) {
    SCOPED_TRACE(str(rows, " rows of ", V));
    const float tau = 1.5f, grad_scale = 0.5f;
    const auto student = stored(random_floats(rows * V, 75 + V, -4, 4), dt());
    const auto teacher = stored(random_floats(rows * V, 76 + V, -4, 4), dt());
    auto ts = dev.put(student, dt()), tt = dev.put(teacher, dt());
    auto losses = dev.poisoned(rows, DType::F32);
    dev.backend().kl_divergence(losses, ts, tt, rows, V, tau, grad_scale);
    std::vector<float> s = student, want_losses(rows);
    cpu::kl_divergence(want_losses.data(), s.data(), teacher.data(), rows, V, tau, grad_scale);
    // KL ~ 1.7 as E_pt[t' - s'] less the difference of two fp32 log-sum-exps (~13 each) over up
    // to 128259 terms, each good to ~log2(V) = 17 ulps of its terms' scale: 2e-5 absolute.
    expect_near_all("kl losses", dev.get(losses), want_losses, 1e-5, 2e-5);
    // exp(x / tau - lse) with lse off by ~2e-5 gives ~2e-5 relative on probabilities of ~1e-5,
    // so ~1e-10 absolute on their difference; bf16 adds one rounding.
    expect_near_all("kl gradient", dev.get(ts), s, dt() == DType::BF16 ? kBf16Ulp : 1e-4, 1e-9);
    EXPECT_EQ(dev.get(tt), teacher);

    auto ts2 = dev.put(student, dt());
    dev.backend().kl_divergence(losses, ts2, tt, rows, V, tau, 0.0f);
    EXPECT_EQ(dev.get(ts2), student);  // no gradient: the student's logits stay as they were
    // As above: the same one pass gives the loss.
    expect_near_all("kl losses (no grad)", dev.get(losses), want_losses, 1e-5, 2e-5);
  }
}

// Student and teacher rows that agree exactly have KL 0 and gradient 0 (p_s = p_t), whatever the
// temperature: the kernel's loss E_pt[t' - s'] - (lse_t - lse_s) sums exact zeros and subtracts
// two log-sum-exps computed by the same operations on the same values, so both come out exactly
// 0, not merely small. A row of one logit (softmax 1 for student and teacher whatever their
// values) has KL 0 and gradient 0 too, rows of 61 start at every phase, and 5000 spans several
// packs a thread. Expectations by hand.
TEST_P(CudaLoss, KlDivergenceOfAgreeingRowsIsExactlyZero) {
  const std::int64_t rows = 3;
  for (const std::int64_t V : {1, 61, 5000}) {
    for (const float tau : {1.0f, 0.7f}) {
      SCOPED_TRACE(str("V=", V, " tau ", tau));
      const auto student = stored(random_floats(rows * V, 77 + V, -6, 6), dt());
      // One logit a row: the teacher's differs and the softmaxes still agree.
      const auto teacher = V == 1 ? stored(random_floats(rows * V, 76, -6, 6), dt()) : student;
      auto ts = dev.put(student, dt()), tt = dev.put(teacher, dt());
      auto losses = dev.poisoned(rows, DType::F32);
      dev.backend().kl_divergence(losses, ts, tt, rows, V, tau, 0.25f);
      EXPECT_EQ(dev.get(losses), std::vector<float>(rows, 0.0f));
      EXPECT_EQ(dev.get(ts), std::vector<float>(rows * V, 0.0f));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaLoss, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return std::string(dtype_label(info.param)); });

}  // namespace
}  // namespace minitron::test
