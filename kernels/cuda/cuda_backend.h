// The CUDA engine: the Backend interface over device memory, bf16 storage, fp32 arithmetic.
//
// Dtype rules (the Backend contract of core/backend.h checks them before any op runs):
//  - activation_dtype() is BF16: parameters, activations and activation gradients. Every op
//    also computes in F32 (computes_in; all of one op's activation tensors share one dtype), so
//    tests can run the same kernels in fp32.
//  - gradient_dtype() is F32: parameter gradients (dweight of RMSNorm, dtable of the
//    embedding, matmul outputs with beta = 1) accumulate in fp32.
//  - F32 always: RMSNorm rstd, attention lse, losses, inv_freq, AdamW master weights and
//    moments, reduce_over_sequence / row_cosine outputs. I32: tokens and targets.
//  - matmul: bf16 x bf16 -> bf16 or f32, f32 x f32 -> f32 (kernels/cuda/gemm.h).
//  - Loss logits: bf16 or f32, written back in place in the same dtype.
//  - copy: any of f32/bf16 to any of f32/bf16.
// Ops run asynchronously on the context's stream; download(), sum_of_squares() and
// synchronize() wait for it. Scratch memory grows on first use of each size and is reused.
#pragma once

#include <memory>
#include <string>

#include "core/backend.h"
#include "kernels/cuda/device_memory.h"

namespace minitron::cuda {

class CudaContext;

class CudaBackend final : public Backend {
 public:
  // On device `device` (-1: the calling thread's current one); see CudaContext.
  explicit CudaBackend(int device = -1);
  ~CudaBackend() override;

  std::string name() const override;
  DType activation_dtype() const override { return DType::BF16; }
  std::int64_t loss_chunk_logits() const override { return kLossChunkLogits; }
  DType gradient_dtype() const override { return DType::F32; }
  bool computes_in(DType dtype) const override {
    return dtype == DType::BF16 || dtype == DType::F32;
  }
  MemorySpace memory_space() const override { return MemorySpace::CudaDevice; }
  std::optional<std::int64_t> memory_bytes() const override;  // cudaMemGetInfo's total
  void free(Tensor& t) override;
  void zero(Tensor t) override;
  void synchronize() override;

  CudaContext& context() { return *context_; }

 private:
  Tensor do_allocate(std::int64_t numel, DType dtype) override;
  void do_upload(Tensor dst, const float* src) override;
  void do_download(float* dst, Tensor src) override;
  void do_upload_i32(Tensor dst, const std::int32_t* src) override;
  void do_copy(Tensor dst, Tensor src) override;
  void do_copy_rows(Tensor dst, Tensor src, std::int64_t rows, std::int64_t width,
                    std::int64_t dst_stride, std::int64_t src_stride) override;

  void do_matmul(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N, std::int64_t K,
                 bool trans_a, bool trans_b, float alpha, float beta) override;
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
  void do_rope_forward(Tensor x, Tensor inv_freq, std::int64_t B, std::int64_t T,
                       std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                       Tensor positions, std::int64_t row_stride) override;
  void do_rope_backward(Tensor dx, Tensor inv_freq, std::int64_t B, std::int64_t T,
                        std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                        Tensor positions, std::int64_t row_stride) override;
  void do_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, std::int64_t B,
                            std::int64_t Tq, std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv,
                            std::int64_t hd, Tensor positions, const AttentionStrides& strides,
                            Tensor rope_inv_freq) override;
  void do_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out, Tensor lse,
                             Tensor q, Tensor k, Tensor v, std::int64_t B, std::int64_t T,
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
  void do_reduce_over_sequence(Tensor out, Tensor act, std::int64_t B, std::int64_t T,
                               std::int64_t C, SequenceReduction reduction) override;
  void do_row_cosine(Tensor out, Tensor a, Tensor b, std::int64_t rows, std::int64_t C) override;

  std::unique_ptr<CudaContext> context_;
};

}  // namespace minitron::cuda
