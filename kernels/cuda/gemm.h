// Row-major GEMM through cuBLASLt: out[M,N] = alpha * op(a) @ op(b) + beta * out.
//
// Inputs bf16 (or both fp32), fp32 accumulation (CUBLAS_COMPUTE_32F: no TF32 shortcut for fp32
// inputs), output bf16 or fp32. Supported dtype triples (a, b -> out):
//   bf16, bf16 -> bf16   activations
//   bf16, bf16 -> f32    parameter gradients (beta = 1 accumulates) and fp32 logits
//   f32,  f32  -> f32    tests and fp32 activations
// cuBLASLt is column-major; a row-major [M,N] matrix is a column-major [N,M] one, so the
// product is computed as out^T = op(b)^T op(a)^T with a and b swapped. A plan (descriptors,
// layouts and the heuristic's algorithm) is built once per shape, dtype and pointer alignment
// and cached: the step loop never re-queries the heuristic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <tuple>

#include <cublasLt.h>

#include "core/tensor.h"

namespace minitron::cuda {

class Gemm {
 public:
  Gemm(cublasLtHandle_t handle, void* workspace, std::size_t workspace_bytes);
  ~Gemm();
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  void run(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N, std::int64_t K,
           bool trans_a, bool trans_b, float alpha, float beta, cudaStream_t stream);
  std::size_t cached_plans() const { return plans_.size(); }

 private:
  // M, N, K, trans_a, trans_b, dtypes (a, b, out), alignments (a, b, out).
  using Key = std::tuple<std::int64_t, std::int64_t, std::int64_t, bool, bool, int, int, int, int,
                         int, int>;
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t layout_a = nullptr, layout_b = nullptr, layout_c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  Plan& plan(const Key& key);

  cublasLtHandle_t handle_;
  void* workspace_;
  std::size_t workspace_bytes_;
  std::map<Key, Plan> plans_;
};

}  // namespace minitron::cuda
