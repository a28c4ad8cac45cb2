#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "core/bf16.h"
#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cpu/attention_blas.h"
#include "kernels/cpu/loss_fast.h"
#include "kernels/cpu/swiglu_fast.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "kernels/reduce.h"
#include "kernels/residual_rmsnorm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"

namespace minitron {
namespace {

constexpr std::size_t kAlignment = 64;

// Products of at most this many rows (a batch of generated tokens, one per sequence) are
// row-independent (rowwise_gemm); larger ones go to OpenBLAS.
constexpr std::int64_t kRowIndependentRows = 64;

// A statistic tensor ("fp32" in backend.h) seen as T*: used in place when its dtype is T,
// otherwise converted into a scratch copy and, for outputs, written back by commit().
template <typename T>
class StatView {
 public:
  StatView(const Tensor& t, bool read) : tensor_(t) {
    const std::int64_t numel = t.numel;
    if (t.dtype == dtype_of<T>()) {
      data_ = t.as<T>();
      return;
    }
    scratch_.resize(static_cast<std::size_t>(numel));
    if (read) {
      if (t.dtype == DType::F32)
        std::copy_n(t.as<float>(), numel, scratch_.data());
      else
        std::copy_n(t.as<double>(), numel, scratch_.data());
    }
    data_ = scratch_.data();
  }
  T* data() const { return data_; }
  void commit() {
    if (scratch_.empty()) return;
    if (tensor_.dtype == DType::F32)
      std::transform(scratch_.begin(), scratch_.end(), tensor_.as<float>(),
                     [](T x) { return static_cast<float>(x); });
    else
      std::transform(scratch_.begin(), scratch_.end(), tensor_.as<double>(),
                     [](T x) { return static_cast<double>(x); });
  }

 private:
  Tensor tensor_;
  T* data_ = nullptr;
  std::vector<T> scratch_;
};

// inv_freq as float*: F32 used in place, F64 rounded to float (transformers keeps it in fp32).
class InvFreqView {
 public:
  explicit InvFreqView(const Tensor& t) {
    if (t.dtype == DType::F32) {
      data_ = t.as<float>();
    } else {
      scratch_.assign(t.as<double>(), t.as<double>() + t.numel);
      data_ = scratch_.data();
    }
  }
  const float* data() const { return data_; }

 private:
  const float* data_ = nullptr;
  std::vector<float> scratch_;
};

double load_element(const Tensor& t, std::int64_t i) {
  switch (t.dtype) {
    case DType::F32: return t.as<float>()[i];
    case DType::F64: return t.as<double>()[i];
    case DType::BF16: return bf16_to_float(t.as<std::uint16_t>()[i]);
    case DType::I32: return t.as<std::int32_t>()[i];
  }
  return 0;
}

void store_element(const Tensor& t, std::int64_t i, double x) {
  switch (t.dtype) {
    case DType::F32: t.as<float>()[i] = static_cast<float>(x); break;
    case DType::F64: t.as<double>()[i] = x; break;
    case DType::BF16: t.as<std::uint16_t>()[i] = float_to_bf16(static_cast<float>(x)); break;
    case DType::I32: MINITRON_ASSERT(false, "store into i32"); break;
  }
}

template <typename T>
void gemm(bool trans_a, bool trans_b, std::int64_t M, std::int64_t N, std::int64_t K, T alpha,
          const T* a, const T* b, T beta, T* c) {
  const auto ta = trans_a ? CblasTrans : CblasNoTrans;
  const auto tb = trans_b ? CblasTrans : CblasNoTrans;
  const blasint lda = static_cast<blasint>(trans_a ? M : K);
  const blasint ldb = static_cast<blasint>(trans_b ? K : N);
  const blasint ldc = static_cast<blasint>(N);
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N),
                static_cast<blasint>(K), alpha, a, lda, b, ldb, beta, c, ldc);
  else
    cblas_dgemm(CblasRowMajor, ta, tb, static_cast<blasint>(M), static_cast<blasint>(N),
                static_cast<blasint>(K), alpha, a, lda, b, ldb, beta, c, ldc);
}

// out[M,N] = alpha a[M,K] b[N,K]^T + beta out with every element one dot product summed in the
// same order whatever M is, so a row's result depends on its own row of `a` only. OpenBLAS's
// sgemm does not promise that (its kernels for a few rows block K differently, so a row computed
// among 17 rows can differ in the last bit from the same row alone), and batched generation
// needs it: each prompt of a batch must get the logits it gets alone. Each row of b is read once
// for all M rows, so a batch of M tokens costs about what one costs (memory-bound either way).
// lda, ldb, ldc: the row strides of a, b and out (K, K and N when dense).
template <typename T>
void rowwise_gemm(std::int64_t M, std::int64_t N, std::int64_t K, T alpha, const T* a,
                  std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* out,
                  std::int64_t ldc) {
#pragma omp parallel for schedule(static) if (M * N * K >= cpu::kMinParallelWork)
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t m = 0; m < M; ++m) {
      const T product = alpha * cpu::dot(a + m * lda, b + n * ldb, K);
      T& o = out[m * ldc + n];
      o = beta == T(0) ? product : product + beta * o;  // BLAS: beta 0 never reads out
    }
}

}  // namespace

template <typename T>
CpuBackend<T>::~CpuBackend() {
  for (void* p : live_) std::free(p);
}

template <typename T>
std::string CpuBackend<T>::name() const {
  return std::is_same_v<T, float> ? "cpu" : "cpu-f64";
}

template <typename T>
T* CpuBackend<T>::attention_workspace(std::int64_t elements) {
  if (static_cast<std::int64_t>(attention_workspace_.size()) < elements)
    attention_workspace_.resize(static_cast<std::size_t>(elements));
  return attention_workspace_.data();
}

// ---- memory ----

template <typename T>
Tensor CpuBackend<T>::do_allocate(std::int64_t numel, DType dtype) {
  if (numel == 0) return Tensor{nullptr, 0, dtype};
  const std::size_t bytes = static_cast<std::size_t>(numel) * dtype_size(dtype);
  const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* data = std::aligned_alloc(kAlignment, rounded);
  if (!data)
    fail_expected(
        str("allocating ", numel, " ", dtype_name(dtype), " elements (", bytes, " bytes)"),
        "out of host memory", "a smaller batch, sequence or model");
  // Zeroed so that nothing an op leaves unwritten can differ from one run to the next.
  std::memset(data, 0, rounded);
  live_.insert(data);
  return Tensor{data, numel, dtype};
}

template <typename T>
void CpuBackend<T>::free(Tensor& t) {
  if (t.empty()) return;
  MINITRON_ASSERT(live_.erase(t.data) == 1, "free: tensor not allocated by this ", name(),
                  " backend, or already freed");
  std::free(t.data);
  t = Tensor{};
}

template <typename T>
void CpuBackend<T>::zero(Tensor t) {
  if (!t.empty()) std::memset(t.data, 0, t.bytes());
}

template <typename T>
void CpuBackend<T>::do_upload(Tensor dst, const float* src) {
  if (dst.numel == 0) return;
  if (dst.dtype == DType::F32) {
    std::memcpy(dst.data, src, dst.bytes());
    return;
  }
  for (std::int64_t i = 0; i < dst.numel; ++i) store_element(dst, i, src[i]);
}

template <typename T>
void CpuBackend<T>::do_download(float* dst, Tensor src) {
  if (src.numel == 0) return;
  if (src.dtype == DType::F32) {
    std::memcpy(dst, src.data, src.bytes());
    return;
  }
  for (std::int64_t i = 0; i < src.numel; ++i) dst[i] = static_cast<float>(load_element(src, i));
}

template <typename T>
void CpuBackend<T>::do_download_f64(double* dst, Tensor src) {
  if (src.numel == 0) return;
  if (src.dtype == DType::F64) {
    std::memcpy(dst, src.data, src.bytes());
    return;
  }
  for (std::int64_t i = 0; i < src.numel; ++i) dst[i] = load_element(src, i);
}

template <typename T>
void CpuBackend<T>::do_upload_i32(Tensor dst, const std::int32_t* src) {
  if (dst.numel > 0) std::memcpy(dst.data, src, dst.bytes());
}

template <typename T>
void CpuBackend<T>::do_copy(Tensor dst, Tensor src) {
  if (dst.numel == 0 || dst.data == src.data) return;
  if (dst.dtype == src.dtype) {
    std::memmove(dst.data, src.data, dst.bytes());
    return;
  }
  for (std::int64_t i = 0; i < dst.numel; ++i) store_element(dst, i, load_element(src, i));
}

template <typename T>
void CpuBackend<T>::do_copy_rows(Tensor dst, Tensor src, std::int64_t rows, std::int64_t width,
                                 std::int64_t dst_stride, std::int64_t src_stride) {
  const std::size_t size = dtype_size(dst.dtype);
  for (std::int64_t r = 0; r < rows; ++r)
    std::memcpy(
        static_cast<char*>(dst.data) + static_cast<std::size_t>(r * dst_stride) * size,
        static_cast<const char*>(src.data) + static_cast<std::size_t>(r * src_stride) * size,
        static_cast<std::size_t>(width) * size);
}

// ---- dense algebra ----

template <typename T>
void CpuBackend<T>::do_matmul(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N,
                              std::int64_t K, bool trans_a, bool trans_b, float alpha, float beta) {
  if (M == 0 || N == 0) return;
  MINITRON_ASSERT(std::max({M, N, K}) <= std::numeric_limits<blasint>::max(),
                  "matmul: a dimension exceeds OpenBLAS's index type");
  if (K == 0) {  // BLAS semantics: beta == 0 overwrites (even NaN), otherwise scales
    if (beta == 0)
      zero(out);
    else
      scale_inplace(out, beta);
    return;
  }
  if (!trans_a && trans_b && M <= kRowIndependentRows) {
    rowwise_gemm<T>(M, N, K, static_cast<T>(alpha), a.as<T>(), K, b.as<T>(), K,
                    static_cast<T>(beta), out.as<T>(), N);
    return;
  }
  gemm<T>(trans_a, trans_b, M, N, K, static_cast<T>(alpha), a.as<T>(), b.as<T>(),
          static_cast<T>(beta), out.as<T>());
}

// Part p of the concatenated dimension is the matmul do_matmul would run on that part's weight
// alone, with the same M, N, K, flags and path (rowwise_gemm or BLAS): its operands and output
// are strided slices (leading dimensions), which BLAS reads through its packing and writes
// element by element, so each part rounds exactly as the separate product did. The reduction
// (ConcatenatedDim::K) accumulates the parts in order, as consecutive matmuls with beta 1 would.
template <typename T>
void CpuBackend<T>::do_matmul_concatenated(Tensor out, Tensor a, Tensor b, std::int64_t M,
                                           std::int64_t N, std::int64_t K, bool trans_a,
                                           bool trans_b, float alpha, float beta,
                                           ConcatenatedDim dim,
                                           std::span<const std::int64_t> parts) {
  if (parts.size() == 1 || M == 0 || N == 0 || K == 0)
    return do_matmul(out, a, b, M, N, K, trans_a, trans_b, alpha, beta);
  const std::int64_t lda = trans_a ? M : K, ldb = trans_b ? K : N, ldc = N;
  const T* a0 = a.as<T>();
  const T* b0 = b.as<T>();
  T* c0 = out.as<T>();
  std::int64_t at = 0;  // the part's start in the concatenated dimension
  for (std::size_t p = 0; p < parts.size(); ++p) {
    const std::int64_t n = parts[p];
    std::int64_t m = M, cols = N, k = K;
    const T* ap = a0;
    const T* bp = b0;
    T* cp = c0;
    T part_beta = static_cast<T>(beta);
    switch (dim) {
      case ConcatenatedDim::M:  // out's rows [at, at + n); a's rows (columns when transposed)
        m = n;
        ap = a0 + (trans_a ? at : at * lda);
        cp = c0 + at * ldc;
        break;
      case ConcatenatedDim::N:  // out's columns; b's columns (rows when transposed)
        cols = n;
        bp = b0 + (trans_b ? at * ldb : at);
        cp = c0 + at;
        break;
      case ConcatenatedDim::K:  // a's columns and b's rows, each part added onto the last
        k = n;
        ap = a0 + (trans_a ? at * lda : at);
        bp = b0 + (trans_b ? at : at * ldb);
        if (p > 0) part_beta = T(1);
        break;
    }
    if (!trans_a && trans_b && m <= kRowIndependentRows)  // do_matmul's choice, per part
      rowwise_gemm<T>(m, cols, k, static_cast<T>(alpha), ap, lda, bp, ldb, part_beta, cp, ldc);
    else
      cpu::gemm_strided<T>(trans_a, trans_b, m, cols, k, static_cast<T>(alpha), ap, lda, bp, ldb,
                           part_beta, cp, ldc);
    at += n;
  }
}

template <typename T>
void CpuBackend<T>::do_add_inplace(Tensor dst, Tensor src) {
  const std::int64_t n = dst.numel;
  auto run = [n](auto* d, const auto* s) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) d[i] += s[i];
  };
  // F32 and T in any mix (the contract's storage or fp32); each sum is rounded once into dst.
  auto into = [&](auto* d) {
    if (src.dtype == DType::F32)
      run(d, src.as<float>());
    else
      run(d, src.as<double>());
  };
  if (dst.dtype == DType::F32)
    into(dst.as<float>());
  else
    into(dst.as<double>());
}

template <typename T>
void CpuBackend<T>::do_scale_inplace(Tensor t, double factor) {
  const std::int64_t n = t.numel;
  auto run = [n](auto* x, auto f) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) x[i] *= f;
  };
  // F32 tensors multiply by the float factor, as the CUDA engine does.
  if (t.dtype == DType::F32)
    run(t.as<float>(), static_cast<float>(factor));
  else
    run(t.as<double>(), factor);
}

template <typename T>
double CpuBackend<T>::do_sum_of_squares(Tensor t) {
  if (t.dtype == DType::F32) return cpu::sum_of_squares(t.as<float>(), t.numel);
  return cpu::sum_of_squares(t.as<double>(), t.numel);
}

// ---- embedding ----

template <typename T>
void CpuBackend<T>::do_embedding_forward(Tensor out, Tensor tokens, Tensor table, std::int64_t N,
                                         std::int64_t D) {
  cpu::embedding_forward(out.as<T>(), tokens.as<std::int32_t>(), table.as<T>(), N, D,
                         table.numel / D);
}

template <typename T>
void CpuBackend<T>::do_embedding_backward(Tensor dtable, Tensor dout, Tensor tokens, std::int64_t N,
                                          std::int64_t D) {
  cpu::embedding_backward(dtable.as<T>(), dout.as<T>(), tokens.as<std::int32_t>(), N, D,
                          dtable.numel / D);
}

// ---- RMSNorm ----

template <typename T>
void CpuBackend<T>::do_rmsnorm_forward(Tensor out, Tensor rstd, Tensor in, Tensor weight,
                                       std::int64_t N, std::int64_t D, float eps) {
  StatView<T> r(rstd, false);
  cpu::rmsnorm_forward(out.as<T>(), r.data(), in.as<T>(), weight.as<T>(), N, D, eps);
  r.commit();
}

template <typename T>
void CpuBackend<T>::do_rmsnorm_backward(Tensor din, Tensor dweight, Tensor dout, Tensor in,
                                        Tensor weight, Tensor rstd, std::int64_t N,
                                        std::int64_t D) {
  StatView<T> r(rstd, true);
  cpu::rmsnorm_backward(din.as<T>(), dweight.as<T>(), dout.as<T>(), in.as<T>(), weight.as<T>(),
                        r.data(), N, D);
}

// One pass over the row instead of copy, add and norm (the plain composition computes the same
// values: the reference's norm reads the stored sum, as rmsnorm_forward would).
template <typename T>
void CpuBackend<T>::do_residual_rmsnorm_forward(Tensor residual_out, Tensor out, Tensor rstd,
                                                Tensor residual, Tensor branch, Tensor weight,
                                                std::int64_t N, std::int64_t D, float eps) {
  StatView<T> r(rstd, false);
  cpu::residual_rmsnorm_forward(residual_out.as<T>(), out.as<T>(), r.data(), residual.as<T>(),
                                branch.as<T>(), weight.as<T>(), N, D, eps);
  r.commit();
}

// ---- RoPE ----

template <typename T>
void CpuBackend<T>::do_rope_forward(Tensor x, Tensor inv_freq, std::int64_t B, std::int64_t T_,
                                    std::int64_t heads, std::int64_t head_dim,
                                    std::int64_t position_offset, Tensor positions,
                                    std::int64_t row_stride) {
  InvFreqView f(inv_freq);
  cpu::rope_forward(x.as<T>(), f.data(), B, T_, heads, head_dim, position_offset,
                    positions.as<const std::int32_t>(), row_stride);
}

template <typename T>
void CpuBackend<T>::do_rope_backward(Tensor dx, Tensor inv_freq, std::int64_t B, std::int64_t T_,
                                     std::int64_t heads, std::int64_t head_dim,
                                     std::int64_t position_offset, Tensor positions,
                                     std::int64_t row_stride) {
  InvFreqView f(inv_freq);
  cpu::rope_backward(dx.as<T>(), f.data(), B, T_, heads, head_dim, position_offset,
                     positions.as<const std::int32_t>(), row_stride);
}

// ---- attention ----

template <typename T>
void CpuBackend<T>::do_attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v,
                                         std::int64_t B, std::int64_t Tq, std::int64_t Tk,
                                         std::int64_t Hq, std::int64_t Hkv, std::int64_t hd,
                                         Tensor positions, const AttentionStrides& strides,
                                         Tensor rope_inv_freq) {
  // RoPE as its own pass over q and k (nothing here gains from fusing it), in place.
  if (!rope_inv_freq.empty()) {
    do_rope_forward(q, rope_inv_freq, B, Tq, Hq, hd, 0, positions, strides.q);
    do_rope_forward(k, rope_inv_freq, B, Tk, Hkv, hd, 0, positions, strides.k);
  }
  StatView<T> l(lse, false);
  cpu::attention_forward_tiles(out.as<T>(), l.data(), q.as<T>(), k.as<T>(), v.as<T>(), B, Tq, Tk,
                               Hq, Hkv, hd, positions.as<const std::int32_t>(),
                               attention_workspace(cpu::attention_tiles_workspace(Tk)), strides);
  l.commit();
}

template <typename T>
void CpuBackend<T>::do_attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out,
                                          Tensor lse, Tensor q, Tensor k, Tensor v, std::int64_t B,
                                          std::int64_t T_, std::int64_t Hq, std::int64_t Hkv,
                                          std::int64_t hd, Tensor positions,
                                          const AttentionStrides& strides, Tensor rope_inv_freq) {
  StatView<T> l(lse, true);
  cpu::attention_backward_tiles(dq.as<T>(), dk.as<T>(), dv.as<T>(), dout.as<T>(), out.as<T>(),
                                l.data(), q.as<T>(), k.as<T>(), v.as<T>(), B, T_, T_, Hq, Hkv, hd,
                                positions.as<const std::int32_t>(),
                                attention_workspace(cpu::attention_tiles_workspace(T_)), strides);
  if (!rope_inv_freq.empty()) {
    do_rope_backward(dq, rope_inv_freq, B, T_, Hq, hd, 0, positions, strides.dq);
    do_rope_backward(dk, rope_inv_freq, B, T_, Hkv, hd, 0, positions, strides.dk);
  }
}

// ---- SwiGLU ----

template <typename T>
void CpuBackend<T>::do_swiglu_forward(Tensor h, Tensor gate, Tensor up, std::int64_t rows,
                                      std::int64_t width, std::int64_t gate_up_stride) {
  cpu::swiglu_forward_fast(h.as<T>(), gate.as<T>(), up.as<T>(), rows, width, gate_up_stride);
}

template <typename T>
void CpuBackend<T>::do_swiglu_backward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up,
                                       std::int64_t rows, std::int64_t width,
                                       std::int64_t gate_up_stride) {
  cpu::swiglu_backward_fast(dgate.as<T>(), dup.as<T>(), dh.as<T>(), gate.as<T>(), up.as<T>(), rows,
                            width, gate_up_stride);
}

// ---- losses ----

template <typename T>
void CpuBackend<T>::do_cross_entropy(Tensor losses, Tensor logits, Tensor targets,
                                     std::int64_t rows, std::int64_t V, float grad_scale) {
  StatView<T> l(losses, false);
  cpu::cross_entropy_fast(l.data(), logits.as<T>(), targets.as<std::int32_t>(), rows, V,
                          grad_scale);
  l.commit();
}

template <typename T>
void CpuBackend<T>::do_kl_divergence(Tensor losses, Tensor student_logits, Tensor teacher_logits,
                                     std::int64_t rows, std::int64_t V, float temperature,
                                     float grad_scale) {
  StatView<T> l(losses, false);
  cpu::kl_divergence(l.data(), student_logits.as<T>(), teacher_logits.as<T>(), rows, V, temperature,
                     grad_scale);
  l.commit();
}

// ---- optimizer ----

// The contract leaves master empty here: CPU parameters are already full precision (T).
template <typename T>
void CpuBackend<T>::do_adamw_update(Tensor params, Tensor /*master*/, Tensor grads, Tensor m,
                                    Tensor v, const AdamWStep& step) {
  const std::int64_t n = params.numel;
  StatView<T> mv(m, true);
  StatView<T> vv(v, true);
  cpu::adamw_update(params.as<T>(), grads.as<T>(), mv.data(), vv.data(), n, step);
  mv.commit();
  vv.commit();
}

// ---- observers ----

template <typename T>
void CpuBackend<T>::do_reduce_over_sequence(Tensor out, Tensor act, std::int64_t B, std::int64_t T_,
                                            std::int64_t C, SequenceReduction reduction) {
  StatView<T> o(out, false);
  cpu::reduce_over_sequence(o.data(), act.as<T>(), B, T_, C, reduction);
  o.commit();
}

template <typename T>
void CpuBackend<T>::do_row_cosine(Tensor out, Tensor a, Tensor b, std::int64_t rows,
                                  std::int64_t C) {
  StatView<T> o(out, false);
  cpu::row_cosine(o.data(), a.as<T>(), b.as<T>(), rows, C);
  o.commit();
}

template class CpuBackend<float>;
template class CpuBackend<double>;

}  // namespace minitron
