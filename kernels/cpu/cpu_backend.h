// The CPU engine: CpuBackend<float> ("cpu", the fp32 reference engine) and
// CpuBackend<double> ("cpu-f64", for gradient checks of the whole model in double).
//
// Memory is host memory (64-byte aligned). The arguments arrive checked by the Backend contract
// (core/backend.h); the engine checks only its own limit, OpenBLAS's index range. Matmul goes
// through OpenBLAS. Attention, cross-entropy and SwiGLU take the fast paths beside their
// references (kernels/cpu/attention_blas.h, loss_fast.h, swiglu_fast.h: BLAS tiles and a
// vectorized exp, equal to the references up to float rounding, tested against them); every
// other op is the reference in kernels/<op>.h.
//
// dtypes: parameters, activations and parameter gradients are T (F32 or F64). Tensors that
// backend.h documents as "fp32" (rstd, lse, losses, inv_freq, m and v, observer outputs) may
// be F32 or T: on "cpu-f64" passing them as F64 keeps a gradient check entirely in double,
// passing them as F32 follows backend.h literally (they are converted around the call).
// add_inplace, scale_inplace and sum_of_squares take F32 as well as T.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_set>
#include <vector>

#include "core/backend.h"

namespace minitron {

template <typename T>
constexpr DType dtype_of();
template <>
constexpr DType dtype_of<float>() {
  return DType::F32;
}
template <>
constexpr DType dtype_of<double>() {
  return DType::F64;
}

template <typename T>
class CpuBackend final : public Backend {
 public:
  CpuBackend() = default;
  ~CpuBackend() override;
  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  std::string name() const override;
  DType activation_dtype() const override { return dtype_of<T>(); }
  DType gradient_dtype() const override { return dtype_of<T>(); }
  MemorySpace memory_space() const override { return MemorySpace::Host; }
  void free(Tensor& t) override;
  void zero(Tensor t) override;
  void synchronize() override {}

 private:
  Tensor do_allocate(std::int64_t numel, DType dtype) override;
  void do_upload(Tensor dst, const float* src) override;
  void do_download(float* dst, Tensor src) override;
  void do_download_f64(double* dst, Tensor src) override;  // exact for F64 tensors
  void do_upload_i32(Tensor dst, const std::int32_t* src) override;
  void do_copy(Tensor dst, Tensor src) override;
  void do_copy_rows(Tensor dst, Tensor src, std::int64_t rows, std::int64_t width,
                    std::int64_t dst_stride, std::int64_t src_stride) override;

  void do_matmul(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N, std::int64_t K,
                 bool trans_a, bool trans_b, float alpha, float beta) override;
  // One product per part, into out's slices: each part's result is the separate matmul's to
  // the bit (the CPU engine's results do not change with fused projections).
  void do_matmul_concatenated(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N,
                              std::int64_t K, bool trans_a, bool trans_b, float alpha, float beta,
                              ConcatenatedDim dim, std::span<const std::int64_t> parts) override;
  void do_add_inplace(Tensor dst, Tensor src) override;
  void do_scale_inplace(Tensor t, double factor) override;
  double do_sum_of_squares(Tensor t) override;

  void do_embedding_forward(Tensor out, Tensor tokens, Tensor table, std::int64_t N,
                            std::int64_t D) override;
  void do_embedding_backward(Tensor dtable, Tensor dout, Tensor tokens, std::int64_t N,
                             std::int64_t D) override;

  void do_rmsnorm_forward(Tensor out, Tensor rstd, Tensor in, Tensor weight, std::int64_t N,
                          std::int64_t D, float eps) override;
  void do_rmsnorm_backward(Tensor din, Tensor dweight, Tensor dout, Tensor in, Tensor weight,
                           Tensor rstd, std::int64_t N, std::int64_t D) override;
  void do_residual_rmsnorm_forward(Tensor residual_out, Tensor out, Tensor rstd, Tensor residual,
                                   Tensor branch, Tensor weight, std::int64_t N, std::int64_t D,
                                   float eps) override;

  void do_rope_forward(Tensor x, Tensor inv_freq, std::int64_t B, std::int64_t T_,
                       std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                       Tensor positions, std::int64_t row_stride) override;
  void do_rope_backward(Tensor dx, Tensor inv_freq, std::int64_t B, std::int64_t T_,
                        std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                        Tensor positions, std::int64_t row_stride) override;

  void do_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, std::int64_t B,
                            std::int64_t Tq, std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv,
                            std::int64_t hd, Tensor positions, const AttentionStrides& strides,
                            Tensor rope_inv_freq) override;
  void do_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out, Tensor lse,
                             Tensor q, Tensor k, Tensor v, std::int64_t B, std::int64_t T_,
                             std::int64_t Hq, std::int64_t Hkv, std::int64_t hd, Tensor positions,
                             const AttentionStrides& strides, Tensor rope_inv_freq) override;

  void do_swiglu_forward(Tensor h, Tensor gate, Tensor up, std::int64_t rows, std::int64_t width,
                         std::int64_t gate_up_stride) override;
  void do_swiglu_backward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up,
                          std::int64_t rows, std::int64_t width,
                          std::int64_t gate_up_stride) override;

  void do_cross_entropy(Tensor losses, Tensor logits, Tensor targets, std::int64_t rows,
                        std::int64_t V, float grad_scale) override;
  void do_kl_divergence(Tensor losses, Tensor student_logits, Tensor teacher_logits,
                        std::int64_t rows, std::int64_t V, float temperature,
                        float grad_scale) override;

  void do_adamw_update(Tensor params, Tensor master, Tensor grads, Tensor m, Tensor v,
                       const AdamWStep& step) override;

  void do_reduce_over_sequence(Tensor out, Tensor act, std::int64_t B, std::int64_t T_,
                               std::int64_t C, SequenceReduction reduction) override;
  void do_row_cosine(Tensor out, Tensor a, Tensor b, std::int64_t rows, std::int64_t C) override;

  // Scratch for attention, grown to the largest call seen so the step loop does not allocate.
  // It makes a backend single-caller: ops on one backend must not run concurrently.
  T* attention_workspace(std::int64_t elements);

  std::unordered_set<void*> live_;  // allocations not yet freed, to catch double frees
  std::vector<T> attention_workspace_;
};

extern template class CpuBackend<float>;
extern template class CpuBackend<double>;

}  // namespace minitron
