// The Backend: every operation the model, the losses, the optimizer and the importance
// observers need, over tensors that live in the backend's memory. The Llama block is written
// once (model/llama.cpp) against this interface; the CPU engine (fp32, or fp64 for gradient
// checks) and the CUDA engine (bf16 storage, fp32 accumulation) implement it.
//
// Conventions for every op:
//  - Matrices are row-major. "N" is a number of rows (tokens = batch * sequence).
//  - Activations and parameters have the backend's storage dtype (activation_dtype());
//    tensors documented as "fp32" are F32 on every backend (norm statistics, log-sum-exp,
//    per-token losses, optimizer state, gradients of the CPU engine).
//  - Backward ops ACCUMULATE into parameter gradients (so gradient accumulation and tied
//    weights work) and OVERWRITE activation gradients unless they say otherwise.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/row_strides.h"
#include "core/tensor.h"

namespace minitron {

struct AdamWStep {
  float learning_rate = 0;
  float beta1 = 0.9f, beta2 = 0.95f, epsilon = 1e-8f;
  float weight_decay = 0;   // already 0 for tensors excluded from decay
  std::int64_t step = 1;    // 1-based, for bias correction
  float grad_scale = 1.0f;  // gradients are multiplied by this first (clipping, accumulation)
};

// How a per-channel activation statistic is reduced over a sequence (importance scoring).
enum class SequenceReduction { Mean, L2, Variance };

// The dimension of a matmul that runs over a weight concatenated from several (the fused
// projections): out's columns N (forward, x W^T), the reduction K (input gradient, dY W) or out's
// rows M (weight gradient, dY^T x).
enum class ConcatenatedDim { M, N, K };

// Where an engine's tensors live: what a communicator must move them through.
enum class MemorySpace { Host, CudaDevice };

// The public ops are the contract: each checks its arguments (dtypes, element counts, sizes,
// overlaps, the op's own preconditions) the same way on every engine, failing with one line
// that names the op and what was expected, then calls the engine's do_<op>. Engines override
// only the do_ functions and check only their own limits (BLAS index range, a kernel's
// supported head_dim).
//
// dtype words used below: an op's "storage" tensors (parameters, activations, their gradients)
// all share one dtype the engine computes in (computes_in); "fp32" tensors are F32, or F64 on an
// engine that computes in F64 (so a gradient check stays in double); parameter gradients are
// gradient_dtype() or any dtype the engine computes in. Element counts are exact: every caller
// passes views of exactly the size (embedding tables: any whole number of rows).
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;        // "cpu", "cpu-f64", "cuda", "cuda-emulated"
  virtual DType activation_dtype() const = 0;  // storage dtype of parameters and activations
  virtual DType gradient_dtype() const = 0;    // storage dtype of parameter gradients
  // The storage dtypes the ops compute in: activation_dtype(), and whatever else an engine
  // runs its kernels in (the CUDA engine: F32 too, so tests can run its kernels in fp32).
  virtual bool computes_in(DType dtype) const { return dtype == activation_dtype(); }
  // Host memory (a communicator sums it over TCP) or CUDA device memory (NCCL moves it).
  virtual MemorySpace memory_space() const = 0;
  // Logits per chunk of the loss head (LossWorkspace's default). Small on a CPU, where a few
  // hundred rows already make an efficient GEMM; a GPU wants thousands, since each chunk's
  // head weight-gradient GEMM reads and writes the whole vocab x hidden gradient.
  virtual std::int64_t loss_chunk_logits() const { return std::int64_t{1} << 24; }
  // The device's memory in bytes where it is a hard, known bound (a GPU's); nullopt on the CPU,
  // whose limit (RAM, swap, overcommit) no figure states.
  virtual std::optional<std::int64_t> memory_bytes() const { return std::nullopt; }

  // ---- memory: owned by the backend until free(); no allocation happens inside ops ----
  Tensor allocate(std::int64_t numel, DType dtype);
  virtual void free(Tensor& t) = 0;
  virtual void zero(Tensor t) = 0;
  // Host <-> backend copies of float tensors with conversion from/to fp32 (rounding to nearest
  // even for bf16); I32 tensors take upload_i32.
  void upload(Tensor dst, const float* src);
  void download(float* dst, Tensor src);
  // Like download, into doubles: exact for F64 tensors (the gradient-check engine's
  // do_download_f64), widened from fp32 otherwise.
  void download_f64(double* dst, Tensor src);
  void upload_i32(Tensor dst, const std::int32_t* src);
  // Any dtype to any float dtype, same numel. dst and src are the same tensor (a no-op) or do
  // not overlap.
  void copy(Tensor dst, Tensor src);
  // Row r of `rows` rows of `width` elements, src at row stride src_stride, into dst at
  // dst_stride (same dtype; strides >= width): the strided views of the fused projections
  // copied out (keys and values into a KV cache) or made dense (an observed gate_proj output).
  // dst and src do not overlap.
  void copy_rows(Tensor dst, Tensor src, std::int64_t rows, std::int64_t width,
                 std::int64_t dst_stride, std::int64_t src_stride);
  virtual void synchronize() = 0;

  // ---- dense algebra ----
  // out[M,N] = alpha * op(a) @ op(b) + beta * out, op(x) = x or x^T; a is [M,K] (or [K,M] when
  // trans_a), b is [K,N] (or [N,K] when trans_b). Accumulates in fp32 (fp64 for F64). a and b
  // are storage; out is their dtype or gradient_dtype() and overlaps neither.
  void matmul(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N, std::int64_t K,
              bool trans_a, bool trans_b, float alpha = 1.0f, float beta = 0.0f);
  // matmul where dimension `dim` is the concatenation of parts (sizes summing to it): the fused
  // q|k|v and gate|up projections, whose weights lie one after the other. The result is one
  // matmul's; an engine may compute it as one GEMM (CUDA) or as one product per part into the
  // strided slices of out (the CPU engine, so that its results are the separate products' to
  // the bit, whatever BLAS does over a wider dimension).
  void matmul_concatenated(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N,
                           std::int64_t K, bool trans_a, bool trans_b, float alpha, float beta,
                           ConcatenatedDim dim, std::span<const std::int64_t> parts);
  // dst += src, same numel; each storage or fp32, in any mix.
  void add_inplace(Tensor dst, Tensor src);
  // A double factor so the f64 engine keeps factors like 1/42 exact to double precision; fp32
  // and bf16 engines round it to float once. t is storage or fp32.
  void scale_inplace(Tensor t, double factor);
  // Sum of squares of every element (storage or fp32), in double, reduced in a fixed order
  // (deterministic).
  double sum_of_squares(Tensor t);

  // ---- embedding: table [vocab, D], tokens I32 [N] ----
  void embedding_forward(Tensor out, Tensor tokens, Tensor table, std::int64_t N, std::int64_t D);
  // dtable += scatter of dout; deterministic (fixed order per row of the table).
  void embedding_backward(Tensor dtable, Tensor dout, Tensor tokens, std::int64_t N,
                          std::int64_t D);

  // ---- RMSNorm: out = in * rsqrt(mean(in^2) + eps) * weight; rstd is fp32 [N] ----
  void rmsnorm_forward(Tensor out, Tensor rstd, Tensor in, Tensor weight, std::int64_t N,
                       std::int64_t D, float eps);
  // din += d(in) (accumulates: din is the residual stream's gradient); dweight += d(weight).
  void rmsnorm_backward(Tensor din, Tensor dweight, Tensor dout, Tensor in, Tensor weight,
                        Tensor rstd, std::int64_t N, std::int64_t D);
  // Residual add fused with the norm that reads it: residual_out = residual + branch (rounded
  // to the storage dtype), then rmsnorm_forward(out, rstd, residual_out, weight). branch may be
  // the same tensor as residual_out (in-place add); no other overlap. Backward: the add passes
  // its gradient to both inputs unchanged, so rmsnorm_backward into the stream's gradient is it.
  void residual_rmsnorm_forward(Tensor residual_out, Tensor out, Tensor rstd, Tensor residual,
                                Tensor branch, Tensor weight, std::int64_t N, std::int64_t D,
                                float eps);

  // ---- RoPE, HF rotate-half convention, in place on x [B*T, heads * head_dim] ----
  // Position of row (b, t) is position_offset + t. inv_freq is fp32 [head_dim / 2]; head_dim
  // is even. Packed documents: `positions` (I32 [B*T], position_offset 0) gives each token's
  // position instead, restarting at 0 at each document's first token (HF's position_ids).
  // row_stride: elements between rows of x (0: dense), so one call rotates the q and k heads of
  // the fused q|k|v projection, which lie side by side in each row (x then spans
  // strided_numel(B*T, heads*head_dim, row_stride) elements).
  void rope_forward(Tensor x, Tensor inv_freq, std::int64_t B, std::int64_t T, std::int64_t heads,
                    std::int64_t head_dim, std::int64_t position_offset, Tensor positions = {},
                    std::int64_t row_stride = 0);
  // In place: dx <- R^T dx (the inverse rotation).
  void rope_backward(Tensor dx, Tensor inv_freq, std::int64_t B, std::int64_t T, std::int64_t heads,
                     std::int64_t head_dim, std::int64_t position_offset, Tensor positions = {},
                     std::int64_t row_stride = 0);

  // ---- causal attention with grouped KV heads ----
  // q [B*Tq, Hq*hd], k/v [B*Tk, Hkv*hd], out [B*Tq, Hq*hd], lse fp32 [B, Hq, Tq].
  // Query row t attends to keys 0 .. t + (Tk - Tq) (so Tk > Tq serves a KV cache; Tk >= Tq).
  // Query head h reads KV head h / (Hq / Hkv), so Hq is a multiple of Hkv. Scale 1/sqrt(hd).
  // Packed documents (FlashAttention's variable-length attention, TRL's padding-free packing):
  // with `positions` (I32 [B*T], Tq == Tk; as for RoPE) query t sees keys t - positions[t] .. t
  // only, its own document. The caller guarantees what the kernels index by: each row's first
  // position is 0 and every other is 0 or its predecessor's + 1 (LlamaModel::forward checks).
  // strides: each tensor's row stride (0: dense), so q, k, v can be strided views of the fused
  // q|k|v projection (each spanning strided_numel(rows, width, stride) elements).
  // rope_inv_freq: RoPE inside attention (rope_forward's frequencies, Tq == Tk, row t at
  // position t or its packed document's position): q and k arrive unrotated and leave rotated in
  // place, exactly as rope_forward over each would leave them (the backward reads them so), and
  // out is the attention over the rotated ones. Engines fuse what pays (CUDA bf16: Q rotated as
  // the attention kernel loads it, K by one pass over K alone). Empty: no RoPE.
  void attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v, std::int64_t B,
                         std::int64_t Tq, std::int64_t Tk, std::int64_t Hq, std::int64_t Hkv,
                         std::int64_t hd, Tensor positions = {},
                         const AttentionStrides& strides = {}, Tensor rope_inv_freq = {});
  // Overwrites dq, dk, dv (Tq == Tk in training); positions and strides as the forward's (dq,
  // dk, dv may be strided views of one fused gradient, written in place). With rope_inv_freq, q
  // and k are the rotated ones the forward left and dq, dk the gradients of the unrotated inputs
  // (RoPE's backward included: CUDA bf16 rotates them back as it stores them).
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out, Tensor lse,
                          Tensor q, Tensor k, Tensor v, std::int64_t B, std::int64_t T,
                          std::int64_t Hq, std::int64_t Hkv, std::int64_t hd, Tensor positions = {},
                          const AttentionStrides& strides = {}, Tensor rope_inv_freq = {});

  // ---- SwiGLU: h = silu(gate) * up, elementwise over n elements; h may be gate or up ----
  // With width > 0 the n elements are n / width rows of `width`, and gate and up (dgate and dup
  // too) are strided views at row stride gate_up_stride: SwiGLU reading the fused gate|up
  // projection [N, 2F] in place (gate its columns [0, F), up [F, 2F)); h and dh stay dense
  // and may then alias no input.
  void swiglu_forward(Tensor h, Tensor gate, Tensor up, std::int64_t n, std::int64_t width = 0,
                      std::int64_t gate_up_stride = 0);
  void swiglu_backward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up, std::int64_t n,
                       std::int64_t width = 0, std::int64_t gate_up_stride = 0);

  // ---- losses over one chunk of rows of logits [rows, V] (fp32 results) ----
  // losses[r] = logsumexp(logits[r]) - logits[r, targets[r]]; rows whose target is negative
  // are ignored (loss 0, gradient 0). When grad_scale != 0, logits is overwritten in place by
  // grad_scale * dloss/dlogits.
  void cross_entropy(Tensor losses, Tensor logits, Tensor targets, std::int64_t rows,
                     std::int64_t V, float grad_scale);
  // Forward KL(p_t || p_s) per row with p = softmax(logits / tau); when grad_scale != 0,
  // student_logits is overwritten by grad_scale * dKL/dstudent_logits.
  void kl_divergence(Tensor losses, Tensor student_logits, Tensor teacher_logits, std::int64_t rows,
                     std::int64_t V, float temperature, float grad_scale);

  // ---- optimizer: AdamW on n = params.numel elements. params is storage; grads is a
  // parameter gradient; m and v are fp32. master is empty when params is already fp32, else it
  // holds the fp32 (F32) copy that is updated and rounded into params.
  void adamw_update(Tensor params, Tensor master, Tensor grads, Tensor m, Tensor v,
                    const AdamWStep& step);

  // ---- observers (importance) ----
  // out fp32 [B, C]: per sample and channel, the reduction over T of act [B*T, C]
  // (Mean: mean |x|; L2: sqrt(sum x^2); Variance: population variance of x).
  void reduce_over_sequence(Tensor out, Tensor act, std::int64_t B, std::int64_t T, std::int64_t C,
                            SequenceReduction reduction);
  // out fp32 [rows]: cosine similarity of a[r] and b[r] (Block Importance).
  void row_cosine(Tensor out, Tensor a, Tensor b, std::int64_t rows, std::int64_t C);

 protected:
  // The engines' implementations, called with arguments the public op has checked.
  virtual Tensor do_allocate(std::int64_t numel, DType dtype) = 0;
  virtual void do_upload(Tensor dst, const float* src) = 0;
  virtual void do_download(float* dst, Tensor src) = 0;
  virtual void do_download_f64(double* dst, Tensor src) {
    std::vector<float> host(static_cast<std::size_t>(src.numel));
    do_download(host.data(), src);
    for (std::size_t i = 0; i < host.size(); ++i) dst[i] = host[i];
  }
  virtual void do_upload_i32(Tensor dst, const std::int32_t* src) = 0;
  virtual void do_copy(Tensor dst, Tensor src) = 0;
  virtual void do_copy_rows(Tensor dst, Tensor src, std::int64_t rows, std::int64_t width,
                            std::int64_t dst_stride, std::int64_t src_stride) = 0;
  virtual void do_matmul(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N,
                         std::int64_t K, bool trans_a, bool trans_b, float alpha, float beta) = 0;
  // One GEMM over the whole concatenated dimension unless an engine computes per part.
  virtual void do_matmul_concatenated(Tensor out, Tensor a, Tensor b, std::int64_t M,
                                      std::int64_t N, std::int64_t K, bool trans_a, bool trans_b,
                                      float alpha, float beta, ConcatenatedDim dim,
                                      std::span<const std::int64_t> parts) {
    (void)dim;
    (void)parts;
    do_matmul(out, a, b, M, N, K, trans_a, trans_b, alpha, beta);
  }
  virtual void do_add_inplace(Tensor dst, Tensor src) = 0;
  virtual void do_scale_inplace(Tensor t, double factor) = 0;
  virtual double do_sum_of_squares(Tensor t) = 0;
  virtual void do_embedding_forward(Tensor out, Tensor tokens, Tensor table, std::int64_t N,
                                    std::int64_t D) = 0;
  virtual void do_embedding_backward(Tensor dtable, Tensor dout, Tensor tokens, std::int64_t N,
                                     std::int64_t D) = 0;
  virtual void do_rmsnorm_forward(Tensor out, Tensor rstd, Tensor in, Tensor weight, std::int64_t N,
                                  std::int64_t D, float eps) = 0;
  virtual void do_rmsnorm_backward(Tensor din, Tensor dweight, Tensor dout, Tensor in,
                                   Tensor weight, Tensor rstd, std::int64_t N, std::int64_t D) = 0;
  virtual void do_residual_rmsnorm_forward(Tensor residual_out, Tensor out, Tensor rstd,
                                           Tensor residual, Tensor branch, Tensor weight,
                                           std::int64_t N, std::int64_t D, float eps) = 0;
  // positions: empty, or the checked I32 [B*T] of packed documents. Row strides reach the
  // engines resolved: never 0 (a dense tensor's is its row width).
  virtual void do_rope_forward(Tensor x, Tensor inv_freq, std::int64_t B, std::int64_t T,
                               std::int64_t heads, std::int64_t head_dim,
                               std::int64_t position_offset, Tensor positions,
                               std::int64_t row_stride) = 0;
  virtual void do_rope_backward(Tensor dx, Tensor inv_freq, std::int64_t B, std::int64_t T,
                                std::int64_t heads, std::int64_t head_dim,
                                std::int64_t position_offset, Tensor positions,
                                std::int64_t row_stride) = 0;
  // rope_inv_freq: checked (fp32 [hd / 2], Tq == Tk) or empty.
  virtual void do_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v,
                                    std::int64_t B, std::int64_t Tq, std::int64_t Tk,
                                    std::int64_t Hq, std::int64_t Hkv, std::int64_t hd,
                                    Tensor positions, const AttentionStrides& strides,
                                    Tensor rope_inv_freq) = 0;
  virtual void do_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out,
                                     Tensor lse, Tensor q, Tensor k, Tensor v, std::int64_t B,
                                     std::int64_t T, std::int64_t Hq, std::int64_t Hkv,
                                     std::int64_t hd, Tensor positions,
                                     const AttentionStrides& strides, Tensor rope_inv_freq) = 0;
  // rows x width elements; gate, up (dgate, dup) at row stride gate_up_stride, h and dh dense.
  // Dense tensors come as one row of n.
  virtual void do_swiglu_forward(Tensor h, Tensor gate, Tensor up, std::int64_t rows,
                                 std::int64_t width, std::int64_t gate_up_stride) = 0;
  virtual void do_swiglu_backward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up,
                                  std::int64_t rows, std::int64_t width,
                                  std::int64_t gate_up_stride) = 0;
  virtual void do_cross_entropy(Tensor losses, Tensor logits, Tensor targets, std::int64_t rows,
                                std::int64_t V, float grad_scale) = 0;
  virtual void do_kl_divergence(Tensor losses, Tensor student_logits, Tensor teacher_logits,
                                std::int64_t rows, std::int64_t V, float temperature,
                                float grad_scale) = 0;
  virtual void do_adamw_update(Tensor params, Tensor master, Tensor grads, Tensor m, Tensor v,
                               const AdamWStep& step) = 0;
  virtual void do_reduce_over_sequence(Tensor out, Tensor act, std::int64_t B, std::int64_t T,
                                       std::int64_t C, SequenceReduction reduction) = 0;
  virtual void do_row_cosine(Tensor out, Tensor a, Tensor b, std::int64_t rows, std::int64_t C) = 0;
};

// Owns one backend allocation; frees it on destruction.
class BackendBuffer {
 public:
  BackendBuffer() = default;
  BackendBuffer(Backend& backend, std::int64_t numel, DType dtype)
      : backend_(&backend), tensor_(backend.allocate(numel, dtype)) {}
  ~BackendBuffer() { reset(); }
  BackendBuffer(BackendBuffer&& o) noexcept : backend_(o.backend_), tensor_(o.tensor_) {
    o.tensor_ = {};
  }
  BackendBuffer& operator=(BackendBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      backend_ = o.backend_;
      tensor_ = o.tensor_;
      o.tensor_ = {};
    }
    return *this;
  }
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;

  void reset() {
    if (backend_ && !tensor_.empty()) backend_->free(tensor_);
    tensor_ = {};
  }
  const Tensor& tensor() const { return tensor_; }
  operator Tensor() const { return tensor_; }  // NOLINT: a buffer is used where a view is
  std::int64_t numel() const { return tensor_.numel; }

 private:
  Backend* backend_ = nullptr;
  Tensor tensor_;
};

}  // namespace minitron
