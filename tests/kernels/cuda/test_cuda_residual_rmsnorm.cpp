// Emulated CUDA backend vs the CPU reference: the residual add fused with RMSNorm
// (kernels/residual_rmsnorm.cuh vs kernels/residual_rmsnorm.h). Shapes are awkward on purpose:
// D not a multiple of the 32-lane warp stride, N = 1 and N not a multiple of the 8 rows a block
// takes; outputs start as NaN so an element the kernel skips fails.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/residual_rmsnorm.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

class CudaResidualRmsNorm : public ::testing::TestWithParam<DType> {
 protected:
  Device dev;
  DType dt() const { return GetParam(); }
};

TEST_P(CudaResidualRmsNorm, ForwardMatchesReference) {
  const float eps = 1e-5f;
  // The last shape's rows are small (mean square of the sum ~2e-6, below eps = 1e-5), so eps
  // sets most of rstd there: an engine that dropped eps fails it.
  struct Case {
    std::int64_t N, D;
    float magnitude;
  };
  for (const auto& [N, D, magnitude] :
       {Case{1, 45, 1}, Case{37, 200, 1}, Case{133, 77, 1}, Case{19, 64, 1e-3f},
        // Rows in shared memory at 8 warps a block (bf16; fp32 4), the weight alone there, nothing.
        Case{9, 4096, 1}, Case{3, 20001, 1}, Case{3, 50001, 1}}) {
    SCOPED_TRACE(str("N=", N, " D=", D, " magnitude=", magnitude));
    const auto x = stored(random_floats(N * D, 51 + N, -2 * magnitude, 2 * magnitude), dt());
    const auto branch = stored(random_floats(N * D, 52 + N, -magnitude, magnitude), dt());
    const auto w = stored(random_floats(D, 53, 0.5f, 1.5f), dt());
    auto tx = dev.put(x, dt()), tb = dev.put(branch, dt()), tw = dev.put(w, dt());
    auto residual_out = dev.poisoned(N * D, dt());
    auto out = dev.poisoned(N * D, dt());
    auto rstd = dev.poisoned(N, DType::F32);
    dev.backend().residual_rmsnorm_forward(residual_out, out, rstd, tx, tb, tw, N, D, eps);

    std::vector<float> want_residual(N * D), want(N * D), want_rstd(N);
    cpu::residual_rmsnorm_forward(want_residual.data(), want.data(), want_rstd.data(), x.data(),
                                  branch.data(), w.data(), N, D, eps);
    // Both add the same two stored values in fp32; the kernel then stores the sum as dt: exact.
    EXPECT_EQ(dev.get(residual_out), stored(want_residual, dt()));
    // rstd: fp32 sum of D squares vs the reference's double (~D * 2^-24 ~ 1e-5 relative); in
    // bf16 the kernel's squares are of the stored sum, each within 2^-9 of the reference's.
    expect_near_all("rstd", dev.get(rstd), want_rstd, dt() == DType::BF16 ? kBf16Ulp : 2e-5, 0);
    // bf16: the stored sum (2^-9) moves sum * rstd by up to 2^-8, then the two roundings of
    // rmsnorm_forward (x * rstd, then the weight product) add up to 2 ulps: 3 ulps in all.
    const auto got = dev.get(out);
    expect_near_all("out", got, want, dt() == DType::BF16 ? 3 * kBf16Ulp : 2e-5, 1e-30);

    // In place: the branch's buffer becomes the new residual (the model's use). Same bits.
    auto inplace_out = dev.poisoned(N * D, dt());
    auto inplace_rstd = dev.poisoned(N, DType::F32);
    dev.backend().residual_rmsnorm_forward(tb, inplace_out, inplace_rstd, tx, tb, tw, N, D, eps);
    EXPECT_EQ(dev.get(tb), dev.get(residual_out));
    EXPECT_EQ(dev.get(inplace_out), got);
    EXPECT_EQ(dev.get(inplace_rstd), dev.get(rstd));
  }
}

TEST_P(CudaResidualRmsNorm, RejectsAliasedOutputsAndWrongSizes) {
  const std::int64_t N = 3, D = 40;
  auto x = dev.put(random_floats(N * D, 61), dt()), b = dev.put(random_floats(N * D, 62), dt());
  auto w = dev.put(random_floats(D, 63), dt()), out = dev.poisoned(N * D, dt());
  auto rstd = dev.poisoned(N, DType::F32);
  // The contract allows only branch == residual_out (each element is read before the thread
  // that reads it overwrites it); out on an input, or residual_out on residual, is refused.
  EXPECT_THROW(dev.backend().residual_rmsnorm_forward(b, b, rstd, x, b, w, N, D, 1e-5f), Error);
  EXPECT_THROW(dev.backend().residual_rmsnorm_forward(x, out, rstd, x, b, w, N, D, 1e-5f), Error);
  EXPECT_THROW(dev.backend().residual_rmsnorm_forward(b, out, rstd, x, b, w, N + 1, D, 1e-5f),
               Error);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CudaResidualRmsNorm, ::testing::Values(DType::F32, DType::BF16),
                         [](const auto& info) { return std::string(dtype_label(info.param)); });

}  // namespace
}  // namespace minitron::test
