// cuBLASLt GEMM wrapper: see gemm.h for the dtype rules and the row-major mapping.
#include "kernels/cuda/gemm.h"

#include <cstdint>

#include "kernels/cuda/cuda_context.h"
#include "util/error.h"

namespace minitron::cuda {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    default: break;
  }
  fail_expected("cuda matmul", str("dtype ", dtype_name(t)), "f32 or bf16");
}

// The largest power of two (at most 16) dividing the address: cuBLASLt picks vectorised
// algorithms only when told the operands allow them.
int alignment(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  int a = 16;
  while (a > 1 && address % static_cast<std::uintptr_t>(a) != 0) a /= 2;
  return a;
}

void set_layout(cublasLtMatrixLayout_t* layout, DType t, std::int64_t rows, std::int64_t cols,
                std::int64_t ld) {
  MINITRON_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(layout, cuda_type(t),
                                                   static_cast<std::uint64_t>(rows),
                                                   static_cast<std::uint64_t>(cols), ld));
}

}  // namespace

Gemm::Gemm(cublasLtHandle_t handle, void* workspace, std::size_t workspace_bytes)
    : handle_(handle), workspace_(workspace), workspace_bytes_(workspace_bytes) {}

Gemm::~Gemm() {
  for (auto& [key, p] : plans_) {
    cublasLtMatrixLayoutDestroy(p.layout_a);
    cublasLtMatrixLayoutDestroy(p.layout_b);
    cublasLtMatrixLayoutDestroy(p.layout_c);
    cublasLtMatmulDescDestroy(p.desc);
  }
}

Gemm::Plan& Gemm::plan(const Key& key) {
  auto found = plans_.find(key);
  if (found != plans_.end()) return found->second;
  const auto [M, N, K, trans_a, trans_b, a_type, b_type, out_type, a_align, b_align, out_align] =
      key;
  Plan p;
  MINITRON_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major: out^T [N, M] = op(b)^T [N, K] * op(a)^T [K, M]; "A" is b, "B" is a.
  const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  MINITRON_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
  MINITRON_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  const DType bt = static_cast<DType>(b_type), at = static_cast<DType>(a_type);
  if (trans_b)
    set_layout(&p.layout_a, bt, K, N, K);
  else
    set_layout(&p.layout_a, bt, N, K, N);
  if (trans_a)
    set_layout(&p.layout_b, at, M, K, M);
  else
    set_layout(&p.layout_b, at, K, M, K);
  set_layout(&p.layout_c, static_cast<DType>(out_type), N, M, N);

  cublasLtMatmulPreference_t preference = nullptr;
  MINITRON_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  const std::uint64_t max_workspace = workspace_bytes_;
  const std::uint32_t align_a = static_cast<std::uint32_t>(b_align);
  const std::uint32_t align_b = static_cast<std::uint32_t>(a_align);
  const std::uint32_t align_c = static_cast<std::uint32_t>(out_align);
  MINITRON_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &max_workspace, sizeof(max_workspace)));
  MINITRON_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
  MINITRON_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
  MINITRON_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
  MINITRON_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));
  cublasLtMatmulHeuristicResult_t result{};
  int found_count = 0;
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.layout_a, p.layout_b, p.layout_c,
                                     p.layout_c, preference, 1, &result, &found_count);
  cublasLtMatmulPreferenceDestroy(preference);
  if (status != CUBLAS_STATUS_SUCCESS || found_count == 0) {
    cublasLtMatrixLayoutDestroy(p.layout_a);
    cublasLtMatrixLayoutDestroy(p.layout_b);
    cublasLtMatrixLayoutDestroy(p.layout_c);
    cublasLtMatmulDescDestroy(p.desc);
    fail(str("cuda matmul: cuBLASLt has no algorithm for M=", M, " N=", N, " K=", K, " (status ",
             static_cast<int>(status), ")"));
  }
  p.algo = result.algo;
  return plans_.emplace(key, p).first->second;
}

void Gemm::run(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N, std::int64_t K,
               bool trans_a, bool trans_b, float alpha, float beta, cudaStream_t stream) {
  // Dtypes and element counts arrive checked by the Backend contract (core/backend.h).
  if (M <= 0 || N <= 0) return;
  if (K == 0) {  // an empty sum: out = beta * out
    fail_expected("cuda matmul", "K = 0", "K >= 1");
  }
  const Key key{M,
                N,
                K,
                trans_a,
                trans_b,
                static_cast<int>(a.dtype),
                static_cast<int>(b.dtype),
                static_cast<int>(out.dtype),
                alignment(a.data),
                alignment(b.data),
                alignment(out.data)};
  Plan& p = plan(key);
  MINITRON_CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &alpha, b.data, p.layout_a, a.data,
                                       p.layout_b, &beta, out.data, p.layout_c, out.data,
                                       p.layout_c, &p.algo, workspace_, workspace_bytes_, stream));
}

}  // namespace minitron::cuda
