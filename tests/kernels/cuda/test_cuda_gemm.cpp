// The cuBLASLt GEMM wrapper (row-major mapping, transposes, mixed dtypes, alpha/beta) run on the
// emulated cuBLASLt, against a double-precision loop. Sizes are small primes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "tests/kernels/cuda/cuda_test_util.h"

namespace minitron::test {
namespace {

struct GemmCase {
  DType in, out;
  bool trans_a, trans_b;
  float alpha, beta;
};

class CudaGemm : public ::testing::TestWithParam<GemmCase> {
 protected:
  Device dev;
};

TEST_P(CudaGemm, MatchesDoubleLoop) {
  const GemmCase c = GetParam();
  const std::int64_t M = 19, N = 23, K = 37;
  const auto a = stored(random_floats(M * K, 81, -1, 1), c.in);
  const auto b = stored(random_floats(K * N, 82, -1, 1), c.in);
  const auto out0 = stored(random_floats(M * N, 83, -1, 1), c.out);
  auto ta = dev.put(a, c.in), tb = dev.put(b, c.in);
  // beta = 0 must not read out (poisoned: NaN * 0 would leak); beta != 0 starts from values.
  auto tout = c.beta == 0 ? dev.poisoned(M * N, c.out) : dev.put(out0, c.out);
  dev.backend().matmul(tout, ta, tb, M, N, K, c.trans_a, c.trans_b, c.alpha, c.beta);

  // a is [M,K] (or its transpose stored [K,M]); b is [K,N] (or [N,K]).
  std::vector<float> want(M * N);
  std::vector<double> bound(M * N);
  for (std::int64_t i = 0; i < M; ++i) {
    for (std::int64_t j = 0; j < N; ++j) {
      double sum = 0, magnitude = 0;
      for (std::int64_t p = 0; p < K; ++p) {
        const double x = c.trans_a ? a[p * M + i] : a[i * K + p];
        const double y = c.trans_b ? b[j * K + p] : b[p * N + j];
        sum += x * y;
        magnitude += std::abs(x * y);
      }
      const double prior = c.beta == 0 ? 0.0 : static_cast<double>(c.beta) * out0[i * N + j];
      const double value = c.alpha * sum + prior;
      want[i * N + j] = static_cast<float>(value);
      // fp32 accumulation of K products: at most K * 2^-24 of their magnitudes (4e-6 covers
      // K = 37 with margin); then one rounding of the result into the output dtype.
      const double rounding = c.out == DType::BF16 ? kBf16Ulp : 1e-7;
      bound[i * N + j] = 4e-6 * (std::abs(c.alpha) * magnitude + std::abs(prior)) +
                         rounding * std::abs(value) + 1e-30;
    }
  }
  expect_within("matmul", dev.get(tout), want, bound);
}

std::vector<GemmCase> cases() {
  std::vector<GemmCase> all;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      all.push_back({DType::BF16, DType::BF16, ta, tb, 1.0f, 0.0f});  // activations
      all.push_back({DType::BF16, DType::F32, ta, tb, 1.0f, 1.0f});   // gradient accumulation
      all.push_back({DType::F32, DType::F32, ta, tb, -0.5f, 0.25f});  // fp32, alpha and beta
    }
  return all;
}

INSTANTIATE_TEST_SUITE_P(Cases, CudaGemm, ::testing::ValuesIn(cases()), [](const auto& info) {
  const GemmCase& c = info.param;
  return str(dtype_label(c.in), "_to_", dtype_label(c.out), c.trans_a ? "_Ta" : "_Na",
             c.trans_b ? "_Tb" : "_Nb");
});

TEST(CudaGemmErrors, MixedInputDtypesAreAClearError) {
  Device dev;
  auto a = dev.poisoned(4, DType::F32), b = dev.poisoned(4, DType::BF16),
       out = dev.poisoned(4, DType::F32);
  try {
    dev.backend().matmul(out, a, b, 2, 2, 2, false, false, 1.0f, 0.0f);
    FAIL() << "f32 x bf16 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "matmul: b is bf16 (expected f32)");
  }
}

}  // namespace
}  // namespace minitron::test
