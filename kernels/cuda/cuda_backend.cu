// The CUDA Backend: argument checks, dtype dispatch and the kernel launchers of kernels/*.cuh.
// The dtype rules are documented in cuda_backend.h.
#include "kernels/cuda/cuda_backend.h"

#include <cstring>
#include <vector>

#include "core/bf16.h"
#include "kernels/adamw.cuh"
#include "kernels/attention.cuh"
#include "kernels/cast.cuh"
#include "kernels/cuda/cuda_backend_factory.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/gemm.h"
#include "kernels/embedding.cuh"
#include "kernels/loss.cuh"
#include "kernels/reduce.cuh"
#include "kernels/residual_rmsnorm.cuh"
#include "kernels/rmsnorm.cuh"
#include "kernels/rope.cuh"
#include "kernels/swiglu.cuh"

namespace minitron::cuda {

namespace {

// Calls f(float{}) or f(bf16{}) for a storage dtype; anything else is an error naming the op.
template <typename F>
void with_float_type(DType t, const char* op, const char* tensor, F&& f) {
  if (t == DType::F32) return f(float{});
  if (t == DType::BF16) return f(bf16{});
  fail_expected(str("cuda ", op), str(tensor, " has dtype ", dtype_name(t)), "f32 or bf16");
}

template <typename T>
T* ptr(const Tensor& t) {
  return static_cast<T*>(t.data);
}

}  // namespace

CudaBackend::CudaBackend(int device) : context_(std::make_unique<CudaContext>(device)) {}
CudaBackend::~CudaBackend() = default;

std::string CudaBackend::name() const {
#if defined(MINITRON_EMULATE)
  return "cuda-emulated";
#else
  return "cuda";
#endif
}

// ---- memory ----

std::optional<std::int64_t> CudaBackend::memory_bytes() const {
  std::size_t free_bytes = 0, total_bytes = 0;
  MINITRON_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return static_cast<std::int64_t>(total_bytes);
}

Tensor CudaBackend::do_allocate(std::int64_t numel, DType dtype) {
  Tensor t{nullptr, numel, dtype};
  if (numel == 0) return t;
  const cudaError_t status = cudaMalloc(&t.data, t.bytes());
  if (status != cudaSuccess)
    fail(str("cuda allocate: ", t.bytes(), " bytes (", numel, " x ", dtype_name(dtype),
             "): ", cudaGetErrorString(status)));
  return t;
}

void CudaBackend::free(Tensor& t) {
  if (t.data) {
    // Kernels still queued may use it; freeing device memory waits for the device anyway.
    MINITRON_CUDA_CHECK(cudaStreamSynchronize(context_->stream()));
    MINITRON_CUDA_CHECK(cudaFree(t.data));
  }
  t = {};
}

void CudaBackend::zero(Tensor t) {
  if (t.numel == 0) return;
  MINITRON_CUDA_CHECK(cudaMemsetAsync(t.data, 0, t.bytes(), context_->stream()));
}

void CudaBackend::do_upload(Tensor dst, const float* src) {
  const cudaStream_t s = context_->stream();
  if (dst.numel == 0) return;
  if (dst.dtype == DType::F32) {
    MINITRON_CUDA_CHECK(cudaMemcpyAsync(dst.data, src, dst.bytes(), cudaMemcpyHostToDevice, s));
  } else if (dst.dtype == DType::BF16) {
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(dst.numel));
    for (std::size_t i = 0; i < bits.size(); ++i) bits[i] = float_to_bf16(src[i]);
    MINITRON_CUDA_CHECK(
        cudaMemcpyAsync(dst.data, bits.data(), dst.bytes(), cudaMemcpyHostToDevice, s));
    MINITRON_CUDA_CHECK(cudaStreamSynchronize(s));  // `bits` dies here
  } else {
    fail_expected("cuda upload", str("destination dtype ", dtype_name(dst.dtype)), "f32 or bf16");
  }
  MINITRON_CUDA_CHECK(cudaStreamSynchronize(s));  // the caller may reuse `src` at once
}

void CudaBackend::do_download(float* dst, Tensor src) {
  const cudaStream_t s = context_->stream();
  if (src.numel == 0) return;
  if (src.dtype == DType::F32) {
    MINITRON_CUDA_CHECK(cudaMemcpyAsync(dst, src.data, src.bytes(), cudaMemcpyDeviceToHost, s));
    MINITRON_CUDA_CHECK(cudaStreamSynchronize(s));
  } else if (src.dtype == DType::BF16) {
    std::vector<std::uint16_t> bits(static_cast<std::size_t>(src.numel));
    MINITRON_CUDA_CHECK(
        cudaMemcpyAsync(bits.data(), src.data, src.bytes(), cudaMemcpyDeviceToHost, s));
    MINITRON_CUDA_CHECK(cudaStreamSynchronize(s));
    for (std::size_t i = 0; i < bits.size(); ++i) dst[i] = bf16_to_float(bits[i]);
  } else {
    fail_expected("cuda download", str("source dtype ", dtype_name(src.dtype)), "f32 or bf16");
  }
}

void CudaBackend::do_upload_i32(Tensor dst, const std::int32_t* src) {
  if (dst.numel == 0) return;
  const cudaStream_t s = context_->stream();
  MINITRON_CUDA_CHECK(cudaMemcpyAsync(dst.data, src, dst.bytes(), cudaMemcpyHostToDevice, s));
  MINITRON_CUDA_CHECK(cudaStreamSynchronize(s));
}

void CudaBackend::do_copy(Tensor dst, Tensor src) {
  if (dst.numel == 0) return;
  const cudaStream_t s = context_->stream();
  if (dst.dtype == src.dtype) {
    MINITRON_CUDA_CHECK(
        cudaMemcpyAsync(dst.data, src.data, dst.bytes(), cudaMemcpyDeviceToDevice, s));
    return;
  }
  with_float_type(dst.dtype, "copy", "destination", [&](auto to) {
    with_float_type(src.dtype, "copy", "source", [&](auto from) {
      using To = decltype(to);
      using From = decltype(from);
      cast<To, From>(ptr<To>(dst), ptr<const From>(src), dst.numel, s);
    });
  });
}

void CudaBackend::do_copy_rows(Tensor dst, Tensor src, std::int64_t rows, std::int64_t width,
                               std::int64_t dst_stride, std::int64_t src_stride) {
  if (rows == 0 || width == 0) return;
  const std::size_t size = dtype_size(dst.dtype);
  MINITRON_CUDA_CHECK(cudaMemcpy2DAsync(
      dst.data, static_cast<std::size_t>(dst_stride) * size, src.data,
      static_cast<std::size_t>(src_stride) * size, static_cast<std::size_t>(width) * size,
      static_cast<std::size_t>(rows), cudaMemcpyDeviceToDevice, context_->stream()));
}

void CudaBackend::synchronize() { MINITRON_CUDA_CHECK(cudaStreamSynchronize(context_->stream())); }

// ---- dense algebra ----

void CudaBackend::do_matmul(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N,
                            std::int64_t K, bool trans_a, bool trans_b, float alpha, float beta) {
  context_->gemm().run(out, a, b, M, N, K, trans_a, trans_b, alpha, beta, context_->stream());
}

void CudaBackend::do_add_inplace(Tensor dst, Tensor src) {
  with_float_type(dst.dtype, "add_inplace", "dst", [&](auto d) {
    with_float_type(src.dtype, "add_inplace", "src", [&](auto s) {
      using D = decltype(d);
      using S = decltype(s);
      cuda::add_inplace<D, S>(ptr<D>(dst), ptr<const S>(src), dst.numel, context_->stream());
    });
  });
}

void CudaBackend::do_scale_inplace(Tensor t, double factor) {
  with_float_type(t.dtype, "scale_inplace", "t", [&](auto tag) {
    using T = decltype(tag);
    // fp32 arithmetic on fp32/bf16 storage: the factor rounded to float once.
    cuda::scale_inplace<T>(ptr<T>(t), static_cast<float>(factor), t.numel, context_->stream());
  });
}

double CudaBackend::do_sum_of_squares(Tensor t) {
  const cudaStream_t s = context_->stream();
  const std::int64_t doubles = sum_of_squares_workspace_doubles(t.numel);
  auto* workspace =
      static_cast<double*>(context_->scratch(static_cast<std::size_t>(doubles) * sizeof(double)));
  double* result = workspace + doubles - 1;
  with_float_type(t.dtype, "sum_of_squares", "t", [&](auto tag) {
    using T = decltype(tag);
    cuda::sum_of_squares<T>(result, ptr<const T>(t), t.numel, workspace, s);
  });
  double host = 0;
  MINITRON_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, s));
  MINITRON_CUDA_CHECK(cudaStreamSynchronize(s));
  return host;
}

// ---- embedding ----

void CudaBackend::do_embedding_forward(Tensor out, Tensor tokens, Tensor table, std::int64_t N,
                                       std::int64_t D) {
  with_float_type(table.dtype, "embedding_forward", "table", [&](auto tag) {
    using T = decltype(tag);
    cuda::embedding_forward<T>(ptr<T>(out), ptr<const std::int32_t>(tokens), ptr<const T>(table), N,
                               D, table.numel / D, context_->stream());
  });
}

void CudaBackend::do_embedding_backward(Tensor dtable, Tensor dout, Tensor tokens, std::int64_t N,
                                        std::int64_t D) {
  const std::int64_t vocab = dtable.numel / D;
  if (vocab >= (std::int64_t{1} << 30) || N >= (std::int64_t{1} << 30))
    fail_expected("cuda embedding_backward", str("vocab ", vocab, ", N ", N), "both below 2^30");
  int* workspace = static_cast<int*>(context_->scratch(
      static_cast<std::size_t>(embedding_workspace_ints(N, vocab)) * sizeof(int)));
  with_float_type(dtable.dtype, "embedding_backward", "dtable", [&](auto g) {
    with_float_type(dout.dtype, "embedding_backward", "dout", [&](auto t) {
      using G = decltype(g);
      using T = decltype(t);
      cuda::embedding_backward<G, T>(ptr<G>(dtable), ptr<const T>(dout),
                                     ptr<const std::int32_t>(tokens), N, D, vocab, workspace,
                                     context_->stream());
    });
  });
}

// ---- RMSNorm ----

void CudaBackend::do_rmsnorm_forward(Tensor out, Tensor rstd, Tensor in, Tensor weight,
                                     std::int64_t N, std::int64_t D, float eps) {
  with_float_type(in.dtype, "rmsnorm_forward", "in", [&](auto tag) {
    using T = decltype(tag);
    cuda::rmsnorm_forward<T>(ptr<T>(out), ptr<float>(rstd), ptr<const T>(in), ptr<const T>(weight),
                             N, D, eps, context_->stream());
  });
}

void CudaBackend::do_rmsnorm_backward(Tensor din, Tensor dweight, Tensor dout, Tensor in,
                                      Tensor weight, Tensor rstd, std::int64_t N, std::int64_t D) {
  float* workspace = static_cast<float*>(context_->scratch(
      static_cast<std::size_t>(rmsnorm_backward_workspace_floats(N, D)) * sizeof(float)));
  with_float_type(in.dtype, "rmsnorm_backward", "in", [&](auto t) {
    with_float_type(dweight.dtype, "rmsnorm_backward", "dweight", [&](auto g) {
      using T = decltype(t);
      using G = decltype(g);
      cuda::rmsnorm_backward<G, T>(ptr<T>(din), ptr<G>(dweight), ptr<const T>(dout),
                                   ptr<const T>(in), ptr<const T>(weight), ptr<const float>(rstd),
                                   N, D, workspace, context_->stream());
    });
  });
}

void CudaBackend::do_residual_rmsnorm_forward(Tensor residual_out, Tensor out, Tensor rstd,
                                              Tensor residual, Tensor branch, Tensor weight,
                                              std::int64_t N, std::int64_t D, float eps) {
  const char* op = "residual_rmsnorm_forward";
  with_float_type(residual.dtype, op, "residual", [&](auto tag) {
    using T = decltype(tag);
    cuda::residual_rmsnorm_forward<T>(ptr<T>(residual_out), ptr<T>(out), ptr<float>(rstd),
                                      ptr<const T>(residual), ptr<const T>(branch),
                                      ptr<const T>(weight), N, D, eps, context_->stream());
  });
}

// ---- RoPE ----

void CudaBackend::do_rope_forward(Tensor x, Tensor inv_freq, std::int64_t B, std::int64_t T,
                                  std::int64_t heads, std::int64_t head_dim,
                                  std::int64_t position_offset, Tensor positions,
                                  std::int64_t row_stride) {
  with_float_type(x.dtype, "rope_forward", "x", [&](auto tag) {
    using X = decltype(tag);
    cuda::rope_forward<X>(ptr<X>(x), ptr<const float>(inv_freq), B, T, heads, head_dim,
                          position_offset, context_->stream(), ptr<const std::int32_t>(positions),
                          row_stride);
  });
}

void CudaBackend::do_rope_backward(Tensor dx, Tensor inv_freq, std::int64_t B, std::int64_t T,
                                   std::int64_t heads, std::int64_t head_dim,
                                   std::int64_t position_offset, Tensor positions,
                                   std::int64_t row_stride) {
  with_float_type(dx.dtype, "rope_backward", "dx", [&](auto tag) {
    using X = decltype(tag);
    cuda::rope_backward<X>(ptr<X>(dx), ptr<const float>(inv_freq), B, T, heads, head_dim,
                           position_offset, context_->stream(), ptr<const std::int32_t>(positions),
                           row_stride);
  });
}

// ---- attention ----

void CudaBackend::do_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v,
                                       std::int64_t B, std::int64_t Tq, std::int64_t Tk,
                                       std::int64_t Hq, std::int64_t Hkv, std::int64_t hd,
                                       Tensor positions, const AttentionStrides& strides,
                                       Tensor rope_inv_freq) {
  with_float_type(q.dtype, "attention_forward", "q", [&](auto tag) {
    using T = decltype(tag);
    cuda::attention_forward<T>(ptr<T>(out), ptr<float>(lse), ptr<T>(q), ptr<T>(k), ptr<const T>(v),
                               B, Tq, Tk, Hq, Hkv, hd, context_->stream(),
                               ptr<const std::int32_t>(positions), strides,
                               ptr<const float>(rope_inv_freq));
  });
}

void CudaBackend::do_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out,
                                        Tensor lse, Tensor q, Tensor k, Tensor v, std::int64_t B,
                                        std::int64_t T, std::int64_t Hq, std::int64_t Hkv,
                                        std::int64_t hd, Tensor positions,
                                        const AttentionStrides& strides, Tensor rope_inv_freq) {
  float* workspace = static_cast<float*>(context_->scratch(
      static_cast<std::size_t>(attention_backward_workspace_floats(B, T, Hq)) * sizeof(float)));
  with_float_type(q.dtype, "attention_backward", "q", [&](auto tag) {
    using X = decltype(tag);
    cuda::attention_backward<X>(ptr<X>(dq), ptr<X>(dk), ptr<X>(dv), ptr<const X>(dout),
                                ptr<const X>(out), ptr<const float>(lse), ptr<const X>(q),
                                ptr<const X>(k), ptr<const X>(v), B, T, Hq, Hkv, hd, workspace,
                                context_->stream(), ptr<const std::int32_t>(positions), strides,
                                ptr<const float>(rope_inv_freq));
  });
}

// ---- SwiGLU ----

void CudaBackend::do_swiglu_forward(Tensor h, Tensor gate, Tensor up, std::int64_t rows,
                                    std::int64_t width, std::int64_t gate_up_stride) {
  with_float_type(gate.dtype, "swiglu_forward", "gate", [&](auto tag) {
    using T = decltype(tag);
    cuda::swiglu_forward<T>(ptr<T>(h), ptr<const T>(gate), ptr<const T>(up), rows * width,
                            context_->stream(), width, gate_up_stride);
  });
}

void CudaBackend::do_swiglu_backward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up,
                                     std::int64_t rows, std::int64_t width,
                                     std::int64_t gate_up_stride) {
  with_float_type(gate.dtype, "swiglu_backward", "gate", [&](auto tag) {
    using T = decltype(tag);
    cuda::swiglu_backward<T>(ptr<T>(dgate), ptr<T>(dup), ptr<const T>(dh), ptr<const T>(gate),
                             ptr<const T>(up), rows * width, context_->stream(), width,
                             gate_up_stride);
  });
}

// ---- losses ----

void CudaBackend::do_cross_entropy(Tensor losses, Tensor logits, Tensor targets, std::int64_t rows,
                                   std::int64_t V, float grad_scale) {
  with_float_type(logits.dtype, "cross_entropy", "logits", [&](auto tag) {
    using T = decltype(tag);
    cuda::cross_entropy<T>(ptr<float>(losses), ptr<T>(logits), ptr<const std::int32_t>(targets),
                           rows, V, grad_scale, context_->stream());
  });
}

void CudaBackend::do_kl_divergence(Tensor losses, Tensor student_logits, Tensor teacher_logits,
                                   std::int64_t rows, std::int64_t V, float temperature,
                                   float grad_scale) {
  with_float_type(student_logits.dtype, "kl_divergence", "student_logits", [&](auto tag) {
    using T = decltype(tag);
    cuda::kl_divergence<T>(ptr<float>(losses), ptr<T>(student_logits), ptr<const T>(teacher_logits),
                           rows, V, temperature, grad_scale, context_->stream());
  });
}

// ---- optimizer ----

void CudaBackend::do_adamw_update(Tensor params, Tensor master, Tensor grads, Tensor m, Tensor v,
                                  const AdamWStep& step) {
  const std::int64_t n = params.numel;
  with_float_type(params.dtype, "adamw_update", "params", [&](auto p) {
    with_float_type(grads.dtype, "adamw_update", "grads", [&](auto g) {
      using P = decltype(p);
      using G = decltype(g);
      cuda::adamw_update<P, G>(ptr<P>(params), master.empty() ? nullptr : ptr<float>(master),
                               ptr<const G>(grads), ptr<float>(m), ptr<float>(v), n, step,
                               context_->stream());
    });
  });
}

// ---- observers ----

void CudaBackend::do_reduce_over_sequence(Tensor out, Tensor act, std::int64_t B, std::int64_t T,
                                          std::int64_t C, SequenceReduction reduction) {
  with_float_type(act.dtype, "reduce_over_sequence", "act", [&](auto tag) {
    using X = decltype(tag);
    cuda::reduce_over_sequence<X>(ptr<float>(out), ptr<const X>(act), B, T, C, reduction,
                                  context_->stream());
  });
}

void CudaBackend::do_row_cosine(Tensor out, Tensor a, Tensor b, std::int64_t rows, std::int64_t C) {
  with_float_type(a.dtype, "row_cosine", "a", [&](auto tag) {
    using X = decltype(tag);
    cuda::row_cosine<X>(ptr<float>(out), ptr<const X>(a), ptr<const X>(b), rows, C,
                        context_->stream());
  });
}

}  // namespace minitron::cuda

namespace minitron {

namespace {
// Why no device can be used, or an empty string when one can; `count` receives the devices.
std::string cuda_unavailable_reason(int& count) {
  count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error for later callers
    return str("cudaGetDeviceCount: ", cudaGetErrorString(status));
  }
  if (count == 0) return "cudaGetDeviceCount: 0 devices";
  return {};
}
}  // namespace

bool cuda_device_available() {
  int count = 0;
  return cuda_unavailable_reason(count).empty();
}

int cuda_device_count() {
  int count = 0;
  return cuda_unavailable_reason(count).empty() ? count : 0;
}

std::unique_ptr<Backend> make_cuda_backend(int ordinal) {
  int count = 0;
  const std::string reason = cuda_unavailable_reason(count);
  if (!reason.empty()) fail(str("cuda: no CUDA device found (", reason, ")"));
  if (ordinal >= count)
    fail_expected(
        str("device 'cuda:", ordinal, "'"),
        str("this machine has ", count, " CUDA device", count == 1 ? "" : "s"),
        count == 1 ? std::string("cuda or cuda:0") : str("cuda or cuda:0 .. cuda:", count - 1));
  return std::make_unique<cuda::CudaBackend>(ordinal);
}

}  // namespace minitron
