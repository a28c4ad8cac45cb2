#include "kernels/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cpu/attention_blas.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "kernels/cpu/loss_fast.h"
#include "kernels/reduce.h"
#include "kernels/residual_rmsnorm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "kernels/cpu/swiglu_fast.h"
#include "core/bf16.h"

namespace minitron {
namespace {

constexpr std::size_t kAlignment = 64;

// Fails naming the op and argument when a tensor's dtype or size disagrees with the call.
void expect(const char* op, const char* arg, const Tensor& t, DType dtype, std::int64_t numel) {
  MINITRON_ASSERT(t.dtype == dtype && t.numel == numel && (numel == 0 || !t.empty()), op, ": ",
                  arg, " is ", dtype_name(t.dtype), "[", t.numel, "]",
                  t.empty() ? " (unallocated)" : "", ", expected ", dtype_name(dtype), "[",
                  numel, "]");
}

bool is_float_type(DType d) { return d == DType::F32 || d == DType::F64; }

void expect_float(const char* op, const char* arg, const Tensor& t, std::int64_t numel) {
  MINITRON_ASSERT(is_float_type(t.dtype) && t.numel == numel && (numel == 0 || !t.empty()), op,
                  ": ", arg, " is ", dtype_name(t.dtype), "[", t.numel, "], expected f32 or f64[",
                  numel, "]");
}

// A statistic tensor ("fp32" in backend.h) seen as T*: used in place when its dtype is T,
// otherwise converted into a scratch copy and, for outputs, written back by commit().
template <typename T>
class StatView {
 public:
  StatView(const char* op, const char* arg, const Tensor& t, std::int64_t numel, bool read)
      : tensor_(t) {
    expect_float(op, arg, t, numel);
    if (t.dtype == dtype_of<T>()) {
      data_ = t.as<T>();
      return;
    }
    scratch_.resize(static_cast<std::size_t>(numel));
    if (read) {
      if (t.dtype == DType::F32) std::copy_n(t.as<float>(), numel, scratch_.data());
      else std::copy_n(t.as<double>(), numel, scratch_.data());
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
  InvFreqView(const char* op, const Tensor& t, std::int64_t numel) {
    expect_float(op, "inv_freq", t, numel);
    if (t.dtype == DType::F32) {
      data_ = t.as<float>();
    } else {
      scratch_.assign(t.as<double>(), t.as<double>() + numel);
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

bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.empty() || b.empty()) return false;
  const char* a0 = static_cast<const char*>(a.data);
  const char* b0 = static_cast<const char*>(b.data);
  return a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
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
Tensor CpuBackend<T>::allocate(std::int64_t numel, DType dtype) {
  MINITRON_ASSERT(numel >= 0, "allocate: negative element count ", numel);
  if (numel == 0) return Tensor{nullptr, 0, dtype};
  const std::size_t bytes = static_cast<std::size_t>(numel) * dtype_size(dtype);
  const std::size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* data = std::aligned_alloc(kAlignment, rounded);
  if (!data)
    fail_expected(str("allocating ", numel, " ", dtype_name(dtype), " elements (", bytes,
                      " bytes)"),
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
void CpuBackend<T>::upload(Tensor dst, const float* src) {
  MINITRON_ASSERT(dst.dtype != DType::I32, "upload: i32 tensors take upload_i32");
  if (dst.numel == 0) return;
  if (dst.dtype == DType::F32) {
    std::memcpy(dst.data, src, dst.bytes());
    return;
  }
  for (std::int64_t i = 0; i < dst.numel; ++i) store_element(dst, i, src[i]);
}

template <typename T>
void CpuBackend<T>::download(float* dst, Tensor src) {
  if (src.numel == 0) return;
  if (src.dtype == DType::F32) {
    std::memcpy(dst, src.data, src.bytes());
    return;
  }
  for (std::int64_t i = 0; i < src.numel; ++i) dst[i] = static_cast<float>(load_element(src, i));
}

template <typename T>
void CpuBackend<T>::download_f64(double* dst, Tensor src) {
  if (src.numel == 0) return;
  if (src.dtype == DType::F64) {
    std::memcpy(dst, src.data, src.bytes());
    return;
  }
  for (std::int64_t i = 0; i < src.numel; ++i) dst[i] = load_element(src, i);
}

template <typename T>
void CpuBackend<T>::upload_i32(Tensor dst, const std::int32_t* src) {
  MINITRON_ASSERT(dst.dtype == DType::I32, "upload_i32: destination is ", dtype_name(dst.dtype),
                  ", expected i32");
  if (dst.numel > 0) std::memcpy(dst.data, src, dst.bytes());
}

template <typename T>
void CpuBackend<T>::copy(Tensor dst, Tensor src) {
  MINITRON_ASSERT(dst.numel == src.numel, "copy: ", dst.numel, " elements from ", src.numel);
  MINITRON_ASSERT(dst.dtype != DType::I32, "copy: destination must be a float dtype");
  if (dst.numel == 0 || dst.data == src.data) return;
  if (dst.dtype == src.dtype) {
    std::memmove(dst.data, src.data, dst.bytes());
    return;
  }
  MINITRON_ASSERT(!overlaps(dst, src), "copy: converting copy between overlapping tensors");
  for (std::int64_t i = 0; i < dst.numel; ++i) store_element(dst, i, load_element(src, i));
}

// ---- dense algebra ----

template <typename T>
void CpuBackend<T>::matmul(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N,
                           std::int64_t K, bool trans_a, bool trans_b, float alpha, float beta) {
  MINITRON_ASSERT(M >= 0 && N >= 0 && K >= 0, "matmul: sizes M=", M, " N=", N, " K=", K);
  constexpr DType dt = dtype_of<T>();
  expect("matmul", "out", out, dt, M * N);
  expect("matmul", "a", a, dt, M * K);
  expect("matmul", "b", b, dt, K * N);
  MINITRON_ASSERT(!overlaps(out, a) && !overlaps(out, b), "matmul: out overlaps an input");
  if (M == 0 || N == 0) return;
  MINITRON_ASSERT(std::max({M, N, K}) <= std::numeric_limits<blasint>::max(),
                  "matmul: a dimension exceeds OpenBLAS's index type");
  if (K == 0) {  // BLAS semantics: beta == 0 overwrites (even NaN), otherwise scales
    if (beta == 0) zero(out);
    else scale_inplace(out, beta);
    return;
  }
  gemm<T>(trans_a, trans_b, M, N, K, static_cast<T>(alpha), a.as<T>(), b.as<T>(),
          static_cast<T>(beta), out.as<T>());
}

template <typename T>
void CpuBackend<T>::add_inplace(Tensor dst, Tensor src) {
  expect_float("add_inplace", "dst", dst, dst.numel);
  expect("add_inplace", "src", src, dst.dtype, dst.numel);
  const std::int64_t n = dst.numel;
  auto run = [n](auto* d, const auto* s) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) d[i] += s[i];
  };
  if (dst.dtype == DType::F32) run(dst.as<float>(), src.as<float>());
  else run(dst.as<double>(), src.as<double>());
}

template <typename T>
void CpuBackend<T>::scale_inplace(Tensor t, double factor) {
  expect_float("scale_inplace", "t", t, t.numel);
  const std::int64_t n = t.numel;
  auto run = [n](auto* x, auto f) {
#pragma omp parallel for schedule(static)
    for (std::int64_t i = 0; i < n; ++i) x[i] *= f;
  };
  // F32 tensors multiply by the float factor, as the CUDA engine does.
  if (t.dtype == DType::F32) run(t.as<float>(), static_cast<float>(factor));
  else run(t.as<double>(), factor);
}

template <typename T>
double CpuBackend<T>::sum_of_squares(Tensor t) {
  expect_float("sum_of_squares", "t", t, t.numel);
  if (t.dtype == DType::F32) return cpu::sum_of_squares(t.as<float>(), t.numel);
  return cpu::sum_of_squares(t.as<double>(), t.numel);
}

// ---- embedding ----

template <typename T>
void CpuBackend<T>::embedding_forward(Tensor out, Tensor tokens, Tensor table, std::int64_t N,
                                      std::int64_t D) {
  MINITRON_ASSERT(D > 0 && table.numel % D == 0, "embedding_forward: table of ", table.numel,
                  " elements is not [vocab, ", D, "]");
  constexpr DType dt = dtype_of<T>();
  expect("embedding_forward", "out", out, dt, N * D);
  expect("embedding_forward", "tokens", tokens, DType::I32, N);
  expect("embedding_forward", "table", table, dt, table.numel);
  cpu::embedding_forward(out.as<T>(), tokens.as<std::int32_t>(), table.as<T>(), N, D,
                         table.numel / D);
}

template <typename T>
void CpuBackend<T>::embedding_backward(Tensor dtable, Tensor dout, Tensor tokens, std::int64_t N,
                                       std::int64_t D) {
  MINITRON_ASSERT(D > 0 && dtable.numel % D == 0, "embedding_backward: dtable of ", dtable.numel,
                  " elements is not [vocab, ", D, "]");
  constexpr DType dt = dtype_of<T>();
  expect("embedding_backward", "dtable", dtable, dt, dtable.numel);
  expect("embedding_backward", "dout", dout, dt, N * D);
  expect("embedding_backward", "tokens", tokens, DType::I32, N);
  cpu::embedding_backward(dtable.as<T>(), dout.as<T>(), tokens.as<std::int32_t>(), N, D,
                          dtable.numel / D);
}

// ---- RMSNorm ----

template <typename T>
void CpuBackend<T>::rmsnorm_forward(Tensor out, Tensor rstd, Tensor in, Tensor weight,
                                    std::int64_t N, std::int64_t D, float eps) {
  constexpr DType dt = dtype_of<T>();
  expect("rmsnorm_forward", "out", out, dt, N * D);
  expect("rmsnorm_forward", "in", in, dt, N * D);
  expect("rmsnorm_forward", "weight", weight, dt, D);
  StatView<T> r("rmsnorm_forward", "rstd", rstd, N, false);
  cpu::rmsnorm_forward(out.as<T>(), r.data(), in.as<T>(), weight.as<T>(), N, D, eps);
  r.commit();
}

template <typename T>
void CpuBackend<T>::rmsnorm_backward(Tensor din, Tensor dweight, Tensor dout, Tensor in,
                                     Tensor weight, Tensor rstd, std::int64_t N, std::int64_t D) {
  constexpr DType dt = dtype_of<T>();
  expect("rmsnorm_backward", "din", din, dt, N * D);
  expect("rmsnorm_backward", "dweight", dweight, dt, D);
  expect("rmsnorm_backward", "dout", dout, dt, N * D);
  expect("rmsnorm_backward", "in", in, dt, N * D);
  expect("rmsnorm_backward", "weight", weight, dt, D);
  StatView<T> r("rmsnorm_backward", "rstd", rstd, N, true);
  cpu::rmsnorm_backward(din.as<T>(), dweight.as<T>(), dout.as<T>(), in.as<T>(), weight.as<T>(),
                        r.data(), N, D);
}

// One pass over the row instead of copy, add and norm (the plain composition computes the same
// values: the reference's norm reads the stored sum, as rmsnorm_forward would).
template <typename T>
void CpuBackend<T>::residual_rmsnorm_forward(Tensor residual_out, Tensor out, Tensor rstd,
                                             Tensor residual, Tensor branch, Tensor weight,
                                             std::int64_t N, std::int64_t D, float eps) {
  constexpr DType dt = dtype_of<T>();
  const char* op = "residual_rmsnorm_forward";
  expect(op, "residual_out", residual_out, dt, N * D);
  expect(op, "out", out, dt, N * D);
  expect(op, "residual", residual, dt, N * D);
  expect(op, "branch", branch, dt, N * D);
  expect(op, "weight", weight, dt, D);
  MINITRON_ASSERT(!overlaps(out, residual_out) && !overlaps(out, residual) &&
                      !overlaps(out, branch) && !overlaps(residual_out, residual) &&
                      (branch.data == residual_out.data || !overlaps(branch, residual_out)),
                  op, ": outputs overlap inputs (only branch == residual_out is allowed)");
  StatView<T> r(op, "rstd", rstd, N, false);
  cpu::residual_rmsnorm_forward(residual_out.as<T>(), out.as<T>(), r.data(), residual.as<T>(),
                                branch.as<T>(), weight.as<T>(), N, D, eps);
  r.commit();
}

// ---- RoPE ----

template <typename T>
void CpuBackend<T>::rope_forward(Tensor x, Tensor inv_freq, std::int64_t B, std::int64_t T_,
                                 std::int64_t heads, std::int64_t head_dim,
                                 std::int64_t position_offset) {
  expect("rope_forward", "x", x, dtype_of<T>(), B * T_ * heads * head_dim);
  InvFreqView f("rope_forward", inv_freq, head_dim / 2);
  cpu::rope_forward(x.as<T>(), f.data(), B, T_, heads, head_dim, position_offset);
}

template <typename T>
void CpuBackend<T>::rope_backward(Tensor dx, Tensor inv_freq, std::int64_t B, std::int64_t T_,
                                  std::int64_t heads, std::int64_t head_dim,
                                  std::int64_t position_offset) {
  expect("rope_backward", "dx", dx, dtype_of<T>(), B * T_ * heads * head_dim);
  InvFreqView f("rope_backward", inv_freq, head_dim / 2);
  cpu::rope_backward(dx.as<T>(), f.data(), B, T_, heads, head_dim, position_offset);
}

// ---- attention ----

template <typename T>
void CpuBackend<T>::attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v,
                                      std::int64_t B, std::int64_t Tq, std::int64_t Tk,
                                      std::int64_t Hq, std::int64_t Hkv, std::int64_t hd) {
  constexpr DType dt = dtype_of<T>();
  expect("attention_forward", "out", out, dt, B * Tq * Hq * hd);
  expect("attention_forward", "q", q, dt, B * Tq * Hq * hd);
  expect("attention_forward", "k", k, dt, B * Tk * Hkv * hd);
  expect("attention_forward", "v", v, dt, B * Tk * Hkv * hd);
  StatView<T> l("attention_forward", "lse", lse, B * Hq * Tq, false);
  cpu::attention_forward_tiles(out.as<T>(), l.data(), q.as<T>(), k.as<T>(), v.as<T>(), B, Tq, Tk,
                               Hq, Hkv, hd,
                               attention_workspace(cpu::attention_tiles_workspace(Tk)));
  l.commit();
}

template <typename T>
void CpuBackend<T>::attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out,
                                       Tensor lse, Tensor q, Tensor k, Tensor v, std::int64_t B,
                                       std::int64_t T_, std::int64_t Hq, std::int64_t Hkv,
                                       std::int64_t hd) {
  constexpr DType dt = dtype_of<T>();
  const std::int64_t nq = B * T_ * Hq * hd, nkv = B * T_ * Hkv * hd;
  expect("attention_backward", "dq", dq, dt, nq);
  expect("attention_backward", "dk", dk, dt, nkv);
  expect("attention_backward", "dv", dv, dt, nkv);
  expect("attention_backward", "dout", dout, dt, nq);
  expect("attention_backward", "out", out, dt, nq);
  expect("attention_backward", "q", q, dt, nq);
  expect("attention_backward", "k", k, dt, nkv);
  expect("attention_backward", "v", v, dt, nkv);
  StatView<T> l("attention_backward", "lse", lse, B * Hq * T_, true);
  cpu::attention_backward_tiles(dq.as<T>(), dk.as<T>(), dv.as<T>(), dout.as<T>(), out.as<T>(),
                                l.data(), q.as<T>(), k.as<T>(), v.as<T>(), B, T_, T_, Hq, Hkv, hd,
                                attention_workspace(cpu::attention_tiles_workspace(T_)));
}

// ---- SwiGLU ----

template <typename T>
void CpuBackend<T>::swiglu_forward(Tensor h, Tensor gate, Tensor up, std::int64_t n) {
  constexpr DType dt = dtype_of<T>();
  expect("swiglu_forward", "h", h, dt, n);
  expect("swiglu_forward", "gate", gate, dt, n);
  expect("swiglu_forward", "up", up, dt, n);
  cpu::swiglu_forward_fast(h.as<T>(), gate.as<T>(), up.as<T>(), n);
}

template <typename T>
void CpuBackend<T>::swiglu_backward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up,
                                    std::int64_t n) {
  constexpr DType dt = dtype_of<T>();
  expect("swiglu_backward", "dgate", dgate, dt, n);
  expect("swiglu_backward", "dup", dup, dt, n);
  expect("swiglu_backward", "dh", dh, dt, n);
  expect("swiglu_backward", "gate", gate, dt, n);
  expect("swiglu_backward", "up", up, dt, n);
  cpu::swiglu_backward_fast(dgate.as<T>(), dup.as<T>(), dh.as<T>(), gate.as<T>(), up.as<T>(),
                            n);
}

// ---- losses ----

template <typename T>
void CpuBackend<T>::cross_entropy(Tensor losses, Tensor logits, Tensor targets,
                                  std::int64_t rows, std::int64_t V, float grad_scale) {
  expect("cross_entropy", "logits", logits, dtype_of<T>(), rows * V);
  expect("cross_entropy", "targets", targets, DType::I32, rows);
  StatView<T> l("cross_entropy", "losses", losses, rows, false);
  cpu::cross_entropy_fast(l.data(), logits.as<T>(), targets.as<std::int32_t>(), rows, V,
                          grad_scale);
  l.commit();
}

template <typename T>
void CpuBackend<T>::kl_divergence(Tensor losses, Tensor student_logits, Tensor teacher_logits,
                                  std::int64_t rows, std::int64_t V, float temperature,
                                  float grad_scale) {
  constexpr DType dt = dtype_of<T>();
  expect("kl_divergence", "student_logits", student_logits, dt, rows * V);
  expect("kl_divergence", "teacher_logits", teacher_logits, dt, rows * V);
  StatView<T> l("kl_divergence", "losses", losses, rows, false);
  cpu::kl_divergence(l.data(), student_logits.as<T>(), teacher_logits.as<T>(), rows, V,
                     temperature, grad_scale);
  l.commit();
}

// ---- optimizer ----

template <typename T>
void CpuBackend<T>::adamw_update(Tensor params, Tensor master, Tensor grads, Tensor m, Tensor v,
                                 const AdamWStep& step) {
  const std::int64_t n = params.numel;
  expect("adamw_update", "params", params, dtype_of<T>(), n);
  MINITRON_ASSERT(master.empty(), "adamw_update: master must be empty on the ", name(),
                  " backend (parameters are already ", dtype_name(dtype_of<T>()), ")");
  expect("adamw_update", "grads", grads, dtype_of<T>(), n);
  StatView<T> mv("adamw_update", "m", m, n, true);
  StatView<T> vv("adamw_update", "v", v, n, true);
  cpu::adamw_update(params.as<T>(), grads.as<T>(), mv.data(), vv.data(), n, step);
  mv.commit();
  vv.commit();
}

// ---- observers ----

template <typename T>
void CpuBackend<T>::reduce_over_sequence(Tensor out, Tensor act, std::int64_t B, std::int64_t T_,
                                         std::int64_t C, SequenceReduction reduction) {
  expect("reduce_over_sequence", "act", act, dtype_of<T>(), B * T_ * C);
  StatView<T> o("reduce_over_sequence", "out", out, B * C, false);
  cpu::reduce_over_sequence(o.data(), act.as<T>(), B, T_, C, reduction);
  o.commit();
}

template <typename T>
void CpuBackend<T>::row_cosine(Tensor out, Tensor a, Tensor b, std::int64_t rows,
                               std::int64_t C) {
  expect("row_cosine", "a", a, dtype_of<T>(), rows * C);
  expect("row_cosine", "b", b, dtype_of<T>(), rows * C);
  StatView<T> o("row_cosine", "out", out, rows, false);
  cpu::row_cosine(o.data(), a.as<T>(), b.as<T>(), rows, C);
  o.commit();
}

template class CpuBackend<float>;
template class CpuBackend<double>;

}  // namespace minitron
