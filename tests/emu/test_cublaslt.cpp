// The cuBLASLt emulation against a naive double-precision GEMM, for every transpose combination,
// bf16 inputs, fp32 and bf16 outputs, alpha/beta, batching and the bias epilogue.
#include <cublasLt.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "emu/emulator.h"

namespace minitron {
namespace {

#define CHECK_CUBLAS(call) ASSERT_EQ((call), CUBLAS_STATUS_SUCCESS) << #call

struct Problem {
  int m, n, k;
  bool transa, transb;
  cudaDataType_t output_type;
  float alpha, beta;
  int batches = 1;
  bool with_bias = false;
};

// Column-major storage of a rows x columns matrix with leading dimension ld.
std::vector<__nv_bfloat16> random_matrix(int columns, int ld, int batches, int seed) {
  std::vector<__nv_bfloat16> values(static_cast<std::size_t>(ld) * columns * batches);
  for (std::size_t i = 0; i < values.size(); ++i)
    values[i] = __float2bfloat16(std::sin(0.37f * static_cast<float>(i) + static_cast<float>(seed)) * 2.0f);
  return values;
}

void run(const Problem& p) {
  SCOPED_TRACE(testing::Message() << "m=" << p.m << " n=" << p.n << " k=" << p.k << " transa=" << p.transa
                                  << " transb=" << p.transb << " out=" << (p.output_type == CUDA_R_32F ? "f32" : "bf16")
                                  << " batches=" << p.batches << " bias=" << p.with_bias);
  // Stored shapes (before op), padded leading dimensions to exercise ld.
  const int a_rows = p.transa ? p.k : p.m, a_columns = p.transa ? p.m : p.k;
  const int b_rows = p.transb ? p.n : p.k, b_columns = p.transb ? p.k : p.n;
  const int lda = a_rows + 3, ldb = b_rows + 1, ldc = p.m + 2;
  const auto a = random_matrix(a_columns, lda, p.batches, 1);
  const auto b = random_matrix(b_columns, ldb, p.batches, 2);
  const std::int64_t stride_a = static_cast<std::int64_t>(lda) * a_columns;
  const std::int64_t stride_b = static_cast<std::int64_t>(ldb) * b_columns;
  const std::int64_t stride_c = static_cast<std::int64_t>(ldc) * p.n;
  std::vector<float> c_f32(stride_c * p.batches), bias(p.m);
  std::vector<__nv_bfloat16> c_bf16(stride_c * p.batches);
  for (std::size_t i = 0; i < c_f32.size(); ++i) {
    c_f32[i] = static_cast<float>(static_cast<int>(i % 7) - 3);
    c_bf16[i] = __float2bfloat16(c_f32[i]);
  }
  for (int i = 0; i < p.m; ++i) bias[i] = 0.25f * static_cast<float>(i % 5);
  std::vector<__nv_bfloat16> bias_bf16(p.m);
  for (int i = 0; i < p.m; ++i) bias_bf16[i] = __float2bfloat16(bias[i]);

  cublasLtHandle_t handle;
  CHECK_CUBLAS(cublasLtCreate(&handle));
  cublasLtMatmulDesc_t desc;
  CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_a = p.transa ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = p.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  const cublasLtEpilogue_t epilogue = p.with_bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof epilogue));
  const void* bias_pointer = p.output_type == CUDA_R_32F ? static_cast<const void*>(bias.data()) : bias_bf16.data();
  if (p.with_bias) {
    CHECK_CUBLAS(
        cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_pointer, sizeof bias_pointer));
  }
  cublasLtMatrixLayout_t la, lb, lc;
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, a_rows, a_columns, lda));
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, b_rows, b_columns, ldb));
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lc, p.output_type, p.m, p.n, ldc));
  if (p.batches > 1) {
    for (auto [layout, stride] : {std::pair{la, stride_a}, std::pair{lb, stride_b}, std::pair{lc, stride_c}}) {
      CHECK_CUBLAS(
          cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &p.batches, sizeof p.batches));
      CHECK_CUBLAS(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride,
                                                    sizeof stride));
    }
  }
  cublasLtMatmulPreference_t preference;
  CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&preference));
  const std::uint64_t workspace = 1 << 20;
  CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                    sizeof workspace));
  cublasLtMatmulHeuristicResult_t heuristic{};
  int found = 0;
  CHECK_CUBLAS(cublasLtMatmulAlgoGetHeuristic(handle, desc, la, lb, lc, lc, preference, 1, &heuristic, &found));
  ASSERT_EQ(found, 1);
  void* c_pointer = p.output_type == CUDA_R_32F ? static_cast<void*>(c_f32.data()) : c_bf16.data();
  const std::vector<float> c_before = c_f32;
  const std::vector<__nv_bfloat16> c_bf16_before = c_bf16;
  // In place (D = C), as the engine's residual GEMMs do.
  CHECK_CUBLAS(cublasLtMatmul(handle, desc, &p.alpha, a.data(), la, b.data(), lb, &p.beta, c_pointer, lc, c_pointer, lc,
                              &heuristic.algo, nullptr, 0, nullptr));
  for (int batch = 0; batch < p.batches; ++batch)
    for (int i = 0; i < p.m; ++i)
      for (int j = 0; j < p.n; ++j) {
        double sum = 0, magnitude = 0;
        for (int q = 0; q < p.k; ++q) {
          const double x = __bfloat162float(a[batch * stride_a + (p.transa ? i * lda + q : q * lda + i)]);
          const double y = __bfloat162float(b[batch * stride_b + (p.transb ? q * ldb + j : j * ldb + q)]);
          sum += x * y;
          magnitude += std::fabs(x * y);
        }
        const std::size_t index = batch * stride_c + static_cast<std::size_t>(j) * ldc + i;
        const double c_value = p.output_type == CUDA_R_32F ? c_before[index] : __bfloat162float(c_bf16_before[index]);
        const double expected = p.alpha * sum + p.beta * c_value + (p.with_bias ? bias[i] : 0.0);
        const double got = p.output_type == CUDA_R_32F ? c_f32[index] : __bfloat162float(c_bf16[index]);
        // fp32 accumulation over k terms (k * 2^-24 relative to sum |terms|), plus for bf16 output
        // one rounding of the result (2^-8 relative).
        const double tolerance = p.k * 0x1p-24 * std::fabs(p.alpha) * magnitude + 1e-6 +
                                 (p.output_type == CUDA_R_32F ? 0.0 : std::fabs(expected) * 0x1p-8);
        ASSERT_NEAR(got, expected, tolerance) << "batch " << batch << " at " << i << "," << j;
      }
  // Padding between columns (rows m..ldc-1) is never written.
  for (int j = 0; j < p.n; ++j)
    for (int i = p.m; i < ldc; ++i) {
      const std::size_t index = static_cast<std::size_t>(j) * ldc + i;
      if (p.output_type == CUDA_R_32F) {
        EXPECT_EQ(c_f32[index], c_before[index]);
      }
    }
  cublasLtMatmulPreferenceDestroy(preference);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(handle);
}

// Alignments stated in the preference are what the algo is chosen for: an operand less aligned
// than stated is refused (a GPU kernel picked for it may fault), one as aligned is computed.
TEST(CublasLtEmulation, RefusesOperandsLessAlignedThanTheHeuristicWasTold) {
  cublasLtHandle_t handle;
  CHECK_CUBLAS(cublasLtCreate(&handle));
  cublasLtMatmulDesc_t desc;
  CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasLtMatrixLayout_t layout;
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, 2, 2, 2));
  alignas(16) float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  alignas(16) float identity[4] = {1, 0, 0, 1};
  const float alpha = 1, beta = 0;
  const cublasLtMatmulPreferenceAttributes_t attributes[] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (const std::uint32_t stated : {16u, 4u}) {
    SCOPED_TRACE(testing::Message() << "stated alignment " << stated);
    alignas(16) float d[4] = {0, 0, 0, 0};
    cublasLtMatmulPreference_t preference;
    CHECK_CUBLAS(cublasLtMatmulPreferenceCreate(&preference));
    for (const auto attribute : attributes)
      CHECK_CUBLAS(cublasLtMatmulPreferenceSetAttribute(preference, attribute, &stated, sizeof stated));
    cublasLtMatmulHeuristicResult_t heuristic{};
    int found = 0;
    CHECK_CUBLAS(cublasLtMatmulAlgoGetHeuristic(handle, desc, layout, layout, layout, layout, preference, 1, &heuristic,
                                                &found));
    // A starts 4 bytes into a 16-byte aligned array.
    const cublasStatus_t status = cublasLtMatmul(handle, desc, &alpha, a + 1, layout, identity, layout, &beta, d,
                                                 layout, d, layout, &heuristic.algo, nullptr, 0, nullptr);
    if (stated == 16) {
      EXPECT_EQ(status, CUBLAS_STATUS_NOT_SUPPORTED);
      EXPECT_EQ(d[0], 0.0f);  // nothing computed
    } else {
      EXPECT_EQ(status, CUBLAS_STATUS_SUCCESS);
      for (int i = 0; i < 4; ++i) EXPECT_EQ(d[i], a[1 + i]);  // A times the identity
    }
    cublasLtMatmulPreferenceDestroy(preference);
  }
  cublasLtMatrixLayoutDestroy(layout);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(handle);
}

TEST(CublasLtEmulation, AllTransposeCombinationsAndOutputTypes) {
  for (bool transa : {false, true})
    for (bool transb : {false, true})
      for (cudaDataType_t output : {CUDA_R_32F, CUDA_R_16BF}) {
        run(Problem{13, 7, 29, transa, transb, output, 1.0f, 0.0f});
        run(Problem{5, 11, 16, transa, transb, output, 0.5f, 1.0f});
      }
}

TEST(CublasLtEmulation, BatchedAndBiasEpilogue) {
  run(Problem{9, 6, 10, true, false, CUDA_R_32F, 2.0f, -1.0f, 3, false});
  run(Problem{8, 5, 12, false, true, CUDA_R_32F, 1.0f, 0.0f, 1, true});
  run(Problem{8, 5, 12, true, true, CUDA_R_16BF, 1.0f, 1.0f, 2, true});
}

TEST(CublasLtEmulation, MismatchedShapesAreRejected) {
  cublasLtHandle_t handle;
  CHECK_CUBLAS(cublasLtCreate(&handle));
  cublasLtMatmulDesc_t desc;
  CHECK_CUBLAS(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  cublasLtMatrixLayout_t la, lb, lc;
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, 4, 5, 4));
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, 6, 3, 6));  // k = 6 but A has 5 columns
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, 4, 3, 4));
  std::vector<__nv_bfloat16> a(20), b(18);
  std::vector<float> c(12);
  const float alpha = 1, beta = 0;
  EXPECT_EQ(cublasLtMatmul(handle, desc, &alpha, a.data(), la, b.data(), lb, &beta, c.data(), lc, c.data(), lc, nullptr,
                           nullptr, 0, nullptr),
            CUBLAS_STATUS_INVALID_VALUE);
  const cublasLtEpilogue_t gelu = CUBLASLT_EPILOGUE_GELU;
  CHECK_CUBLAS(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &gelu, sizeof gelu));
  CHECK_CUBLAS(cublasLtMatrixLayoutDestroy(lb));
  CHECK_CUBLAS(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, 5, 3, 5));
  EXPECT_EQ(cublasLtMatmul(handle, desc, &alpha, a.data(), la, b.data(), lb, &beta, c.data(), lc, c.data(), lc, nullptr,
                           nullptr, 0, nullptr),
            CUBLAS_STATUS_NOT_SUPPORTED);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(handle);
}

}  // namespace
}  // namespace minitron
