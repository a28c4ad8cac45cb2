// The Backend contract: every public op checks its arguments here, once for every engine, then
// calls the engine's do_<op>. The dtype words (storage, fp32, parameter gradient) are defined in
// backend.h.
#include "core/backend.h"

#include <initializer_list>
#include <string>
#include <vector>

#include "util/error.h"

namespace minitron {
namespace {

// The dtypes an argument may have, named in an error as "f32 or bf16".
class DTypeSet {
 public:
  constexpr DTypeSet() = default;
  constexpr DTypeSet(std::initializer_list<DType> dtypes) {
    for (DType d : dtypes) add(d);
  }
  constexpr DTypeSet& add(DType d) {
    bits_ |= 1u << static_cast<unsigned>(d);
    return *this;
  }
  DTypeSet& add(const DTypeSet& other) {
    bits_ |= other.bits_;
    return *this;
  }
  constexpr bool contains(DType d) const { return (bits_ >> static_cast<unsigned>(d)) & 1u; }
  std::string names() const {
    std::vector<std::string> names;
    for (DType d : {DType::F32, DType::F64, DType::BF16, DType::I32})
      if (contains(d)) names.emplace_back(dtype_name(d));
    std::string out;
    for (std::size_t i = 0; i < names.size(); ++i)
      out += (i == 0 ? "" : i + 1 == names.size() ? " or " : ", ") + names[i];
    return out;
  }

 private:
  unsigned bits_ = 0;
};

// The float dtypes: what upload and download convert from and to, and what copy writes.
constexpr DTypeSet kFloatDTypes{DType::F32, DType::F64, DType::BF16};

bool overlaps(const Tensor& a, const Tensor& b) {
  if (a.empty() || b.empty()) return false;
  const char* a0 = static_cast<const char*>(a.data);
  const char* b0 = static_cast<const char*>(b.data);
  return a0 < b0 + b.bytes() && b0 < a0 + a.bytes();
}

// The checks of one op call; every failure is one line naming the op.
class OpCheck {
 public:
  OpCheck(const Backend& backend, const char* op) : backend_(backend), op_(op) {}

  void size(const char* name, std::int64_t value) const {
    if (value < 0) fail_expected(op_, str(name, " = ", value), "a size >= 0");
  }
  void positive(const char* name, std::int64_t value) const {
    if (value < 1) fail_expected(op_, str(name, " = ", value), "a size >= 1");
  }
  void require(bool holds, const std::string& why, const std::string& expected) const {
    if (!holds) fail_expected(op_, why, expected);
  }

  // The dtype sets of backend.h.
  DTypeSet storage() const {
    DTypeSet set;
    for (DType d : {DType::F32, DType::F64, DType::BF16})
      if (backend_.computes_in(d)) set.add(d);
    return set;
  }
  DTypeSet fp32() const {
    DTypeSet set{DType::F32};
    if (backend_.computes_in(DType::F64)) set.add(DType::F64);
    return set;
  }
  DTypeSet parameter_gradient() const { return storage().add(backend_.gradient_dtype()); }

  void dtype(const char* arg, const Tensor& t, const DTypeSet& accepted) const {
    if (!accepted.contains(t.dtype))
      fail_expected(op_, str(arg, " is ", dtype_name(t.dtype)), accepted.names());
  }
  void count(const char* arg, const Tensor& t, std::int64_t numel) const {
    if (t.numel != numel) fail_expected(op_, str(arg, " has ", t.numel, " elements"), str(numel));
    if (numel > 0 && t.empty())
      fail_expected(op_, str(arg, " is unallocated"), str("a tensor of ", numel, " elements"));
  }
  void tensor(const char* arg, const Tensor& t, const DTypeSet& accepted,
              std::int64_t numel) const {
    dtype(arg, t, accepted);
    count(arg, t, numel);
  }
  // The op's storage dtype, set by its first storage tensor; the others must share it.
  DType storage_tensor(const char* arg, const Tensor& t, std::int64_t numel) const {
    tensor(arg, t, storage(), numel);
    return t.dtype;
  }
  void separate(const char* a_name, const Tensor& a, const char* b_name, const Tensor& b) const {
    if (overlaps(a, b)) fail_expected(op_, str(a_name, " overlaps ", b_name), "separate tensors");
  }

 private:
  const Backend& backend_;
  const char* op_;
};

}  // namespace

// ---- memory ----

Tensor Backend::allocate(std::int64_t numel, DType dtype) {
  OpCheck(*this, "allocate").size("numel", numel);
  return do_allocate(numel, dtype);
}

void Backend::upload(Tensor dst, const float* src) {
  const OpCheck check(*this, "upload");
  check.tensor("dst", dst, kFloatDTypes, dst.numel);
  do_upload(dst, src);
}

void Backend::download(float* dst, Tensor src) {
  const OpCheck check(*this, "download");
  check.tensor("src", src, kFloatDTypes, src.numel);
  do_download(dst, src);
}

void Backend::download_f64(double* dst, Tensor src) {
  const OpCheck check(*this, "download_f64");
  check.tensor("src", src, kFloatDTypes, src.numel);
  do_download_f64(dst, src);
}

void Backend::upload_i32(Tensor dst, const std::int32_t* src) {
  OpCheck(*this, "upload_i32").tensor("dst", dst, {DType::I32}, dst.numel);
  do_upload_i32(dst, src);
}

void Backend::copy(Tensor dst, Tensor src) {
  const OpCheck check(*this, "copy");
  check.tensor("dst", dst, kFloatDTypes, dst.numel);
  check.count("src", src, dst.numel);
  // The same tensor is a no-op; any other overlap is refused, since a device-to-device copy
  // (cudaMemcpyAsync) is undefined on overlapping ranges where the CPU's memmove is not.
  if (dst.data != src.data || dst.dtype != src.dtype) check.separate("dst", dst, "src", src);
  do_copy(dst, src);
}

void Backend::copy_rows(Tensor dst, Tensor src, std::int64_t rows, std::int64_t width,
                        std::int64_t dst_stride, std::int64_t src_stride) {
  const OpCheck check(*this, "copy_rows");
  check.size("rows", rows);
  check.size("width", width);
  check.require(dst_stride >= width && src_stride >= width,
                str("strides ", dst_stride, " and ", src_stride, " for rows of ", width),
                "strides of at least the width");
  check.tensor("dst", dst, kFloatDTypes, strided_numel(rows, width, dst_stride));
  check.tensor("src", src, {dst.dtype}, strided_numel(rows, width, src_stride));
  check.separate("dst", dst, "src", src);
  do_copy_rows(dst, src, rows, width, dst_stride, src_stride);
}

// ---- dense algebra ----

namespace {

// A matmul's operands: a [M, K] and b [K, N] in one storage dtype, out [M, N] in it or the
// gradient dtype, overlapping neither.
void check_matmul_operands(const OpCheck& check, DType gradient_dtype, Tensor out, Tensor a,
                           Tensor b, std::int64_t M, std::int64_t N, std::int64_t K) {
  check.size("M", M);
  check.size("N", N);
  check.size("K", K);
  const DType s = check.storage_tensor("a", a, M * K);
  check.tensor("b", b, {s}, K * N);
  check.tensor("out", out, {s, gradient_dtype}, M * N);
  check.separate("out", out, "a", a);
  check.separate("out", out, "b", b);
}

}  // namespace

void Backend::matmul(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N, std::int64_t K,
                     bool trans_a, bool trans_b, float alpha, float beta) {
  check_matmul_operands(OpCheck(*this, "matmul"), gradient_dtype(), out, a, b, M, N, K);
  do_matmul(out, a, b, M, N, K, trans_a, trans_b, alpha, beta);
}

void Backend::matmul_concatenated(Tensor out, Tensor a, Tensor b, std::int64_t M, std::int64_t N,
                                  std::int64_t K, bool trans_a, bool trans_b, float alpha,
                                  float beta, ConcatenatedDim dim,
                                  std::span<const std::int64_t> parts) {
  const OpCheck check(*this, "matmul_concatenated");
  check_matmul_operands(check, gradient_dtype(), out, a, b, M, N, K);
  const std::int64_t whole = dim == ConcatenatedDim::M ? M : dim == ConcatenatedDim::N ? N : K;
  std::int64_t sum = 0;
  for (const std::int64_t part : parts) {
    check.positive("a part", part);
    sum += part;
  }
  check.require(!parts.empty() && sum == whole,
                str(parts.size(), " parts summing to ", sum, " of a dimension of ", whole),
                "parts that add up to the concatenated dimension");
  do_matmul_concatenated(out, a, b, M, N, K, trans_a, trans_b, alpha, beta, dim, parts);
}

void Backend::add_inplace(Tensor dst, Tensor src) {
  const OpCheck check(*this, "add_inplace");
  DTypeSet accepted = check.storage();
  accepted.add(check.fp32());
  check.tensor("dst", dst, accepted, dst.numel);
  check.tensor("src", src, accepted, dst.numel);
  do_add_inplace(dst, src);
}

void Backend::scale_inplace(Tensor t, double factor) {
  const OpCheck check(*this, "scale_inplace");
  check.tensor("t", t, check.storage().add(check.fp32()), t.numel);
  do_scale_inplace(t, factor);
}

double Backend::sum_of_squares(Tensor t) {
  const OpCheck check(*this, "sum_of_squares");
  check.tensor("t", t, check.storage().add(check.fp32()), t.numel);
  return do_sum_of_squares(t);
}

// ---- embedding ----

void Backend::embedding_forward(Tensor out, Tensor tokens, Tensor table, std::int64_t N,
                                std::int64_t D) {
  const OpCheck check(*this, "embedding_forward");
  check.size("N", N);
  check.positive("D", D);
  const DType s = check.storage_tensor("table", table, table.numel);
  check.require(table.numel % D == 0, str("table has ", table.numel, " elements"),
                str("a multiple of D = ", D));
  check.tensor("out", out, {s}, N * D);
  check.tensor("tokens", tokens, {DType::I32}, N);
  do_embedding_forward(out, tokens, table, N, D);
}

void Backend::embedding_backward(Tensor dtable, Tensor dout, Tensor tokens, std::int64_t N,
                                 std::int64_t D) {
  const OpCheck check(*this, "embedding_backward");
  check.size("N", N);
  check.positive("D", D);
  check.storage_tensor("dout", dout, N * D);
  check.tensor("dtable", dtable, check.parameter_gradient(), dtable.numel);
  check.require(dtable.numel % D == 0, str("dtable has ", dtable.numel, " elements"),
                str("a multiple of D = ", D));
  check.tensor("tokens", tokens, {DType::I32}, N);
  do_embedding_backward(dtable, dout, tokens, N, D);
}

// ---- RMSNorm ----

void Backend::rmsnorm_forward(Tensor out, Tensor rstd, Tensor in, Tensor weight, std::int64_t N,
                              std::int64_t D, float eps) {
  const OpCheck check(*this, "rmsnorm_forward");
  check.size("N", N);
  check.size("D", D);
  const DType s = check.storage_tensor("in", in, N * D);
  check.tensor("out", out, {s}, N * D);
  check.tensor("weight", weight, {s}, D);
  check.tensor("rstd", rstd, check.fp32(), N);
  do_rmsnorm_forward(out, rstd, in, weight, N, D, eps);
}

void Backend::rmsnorm_backward(Tensor din, Tensor dweight, Tensor dout, Tensor in, Tensor weight,
                               Tensor rstd, std::int64_t N, std::int64_t D) {
  const OpCheck check(*this, "rmsnorm_backward");
  check.size("N", N);
  check.size("D", D);
  const DType s = check.storage_tensor("in", in, N * D);
  check.tensor("din", din, {s}, N * D);
  check.tensor("dout", dout, {s}, N * D);
  check.tensor("weight", weight, {s}, D);
  check.tensor("dweight", dweight, check.parameter_gradient(), D);
  check.tensor("rstd", rstd, check.fp32(), N);
  do_rmsnorm_backward(din, dweight, dout, in, weight, rstd, N, D);
}

void Backend::residual_rmsnorm_forward(Tensor residual_out, Tensor out, Tensor rstd,
                                       Tensor residual, Tensor branch, Tensor weight,
                                       std::int64_t N, std::int64_t D, float eps) {
  const OpCheck check(*this, "residual_rmsnorm_forward");
  check.size("N", N);
  check.size("D", D);
  const DType s = check.storage_tensor("residual", residual, N * D);
  check.tensor("branch", branch, {s}, N * D);
  check.tensor("residual_out", residual_out, {s}, N * D);
  check.tensor("out", out, {s}, N * D);
  check.tensor("weight", weight, {s}, D);
  check.tensor("rstd", rstd, check.fp32(), N);
  check.separate("out", out, "residual_out", residual_out);
  check.separate("out", out, "residual", residual);
  check.separate("out", out, "branch", branch);
  check.separate("residual_out", residual_out, "residual", residual);
  // The one overlap allowed: the add in place (each element is read before it is written).
  if (branch.data != residual_out.data)
    check.separate("residual_out", residual_out, "branch", branch);
  do_residual_rmsnorm_forward(residual_out, out, rstd, residual, branch, weight, N, D, eps);
}

// ---- RoPE ----

namespace {
void check_rope(const Backend& backend, const char* op, const char* x_name, const Tensor& x,
                const Tensor& inv_freq, std::int64_t B, std::int64_t T, std::int64_t heads,
                std::int64_t head_dim, std::int64_t position_offset, const Tensor& positions,
                std::int64_t row_stride) {
  const OpCheck check(backend, op);
  check.size("B", B);
  check.size("T", T);
  check.size("heads", heads);
  check.size("head_dim", head_dim);
  check.size("position_offset", position_offset);
  check.require(head_dim % 2 == 0, str("head_dim = ", head_dim),
                "an even head_dim: rotate-half pairs channel i with i + head_dim / 2");
  check.size("row_stride", row_stride);
  const std::int64_t width = heads * head_dim, stride = row_stride_or(row_stride, width);
  check.require(stride >= width, str("row_stride = ", row_stride, " for rows of ", width),
                "0 (dense) or at least heads * head_dim");
  check.storage_tensor(x_name, x, strided_numel(B * T, width, stride));
  check.tensor("inv_freq", inv_freq, check.fp32(), head_dim / 2);
  if (!positions.empty()) {
    check.tensor("positions", positions, {DType::I32}, B * T);
    check.require(position_offset == 0,
                  str("position_offset = ", position_offset, " with positions"),
                  "position_offset 0: positions give every token's position");
  }
}
}  // namespace

void Backend::rope_forward(Tensor x, Tensor inv_freq, std::int64_t B, std::int64_t T,
                           std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                           Tensor positions, std::int64_t row_stride) {
  check_rope(*this, "rope_forward", "x", x, inv_freq, B, T, heads, head_dim, position_offset,
             positions, row_stride);
  do_rope_forward(x, inv_freq, B, T, heads, head_dim, position_offset, positions,
                  row_stride_or(row_stride, heads * head_dim));
}

void Backend::rope_backward(Tensor dx, Tensor inv_freq, std::int64_t B, std::int64_t T,
                            std::int64_t heads, std::int64_t head_dim, std::int64_t position_offset,
                            Tensor positions, std::int64_t row_stride) {
  check_rope(*this, "rope_backward", "dx", dx, inv_freq, B, T, heads, head_dim, position_offset,
             positions, row_stride);
  do_rope_backward(dx, inv_freq, B, T, heads, head_dim, position_offset, positions,
                   row_stride_or(row_stride, heads * head_dim));
}

// ---- attention ----

namespace {
void check_attention_shape(const OpCheck& check, std::int64_t B, std::int64_t Tq, std::int64_t Tk,
                           std::int64_t Hq, std::int64_t Hkv, std::int64_t hd) {
  check.size("B", B);
  check.size("Tq", Tq);
  check.size("Tk", Tk);
  check.size("Hq", Hq);
  check.positive("Hkv", Hkv);
  check.size("hd", hd);
  check.require(Hq % Hkv == 0, str("Hq = ", Hq, " query heads over Hkv = ", Hkv, " KV heads"),
                "Hq a multiple of Hkv");
  check.require(Tk >= Tq, str("Tk = ", Tk, " keys for Tq = ", Tq, " queries"), "Tk >= Tq");
}

// Packed documents: one position per query token, and no KV cache (whose keys precede them).
void check_attention_positions(const OpCheck& check, const Tensor& positions, std::int64_t B,
                               std::int64_t Tq, std::int64_t Tk) {
  if (positions.empty()) return;
  check.tensor("positions", positions, {DType::I32}, B * Tq);
  check.require(Tq == Tk, str("positions with Tq = ", Tq, " queries over Tk = ", Tk, " keys"),
                "Tq == Tk: packed documents have no KV cache");
}

// Each given stride is 0 (dense) or at least its tensor's row width.
void check_attention_strides(const OpCheck& check, const AttentionStrides& given,
                             std::int64_t q_width, std::int64_t kv_width) {
  struct Stride {
    const char* name;
    std::int64_t stride, width;
  };
  const Stride strides[] = {{"q", given.q, q_width},       {"k", given.k, kv_width},
                            {"v", given.v, kv_width},      {"out", given.out, q_width},
                            {"dout", given.dout, q_width}, {"dq", given.dq, q_width},
                            {"dk", given.dk, kv_width},    {"dv", given.dv, kv_width}};
  for (const auto& [name, stride, width] : strides) {
    check.require(stride == 0 || stride >= width, str(name, " row stride ", stride),
                  str("0 (dense) or at least its row width ", width));
  }
}

// RoPE inside attention: rope_forward's frequencies, and no KV cache (whose keys were rotated
// when they were cached).
void check_attention_rope(const OpCheck& check, const Tensor& rope_inv_freq, std::int64_t Tq,
                          std::int64_t Tk, std::int64_t hd) {
  if (rope_inv_freq.empty()) return;
  check.require(hd % 2 == 0, str("RoPE with hd = ", hd),
                "an even hd: rotate-half pairs channel i with i + hd / 2");
  check.tensor("rope_inv_freq", rope_inv_freq, check.fp32(), hd / 2);
  check.require(Tq == Tk, str("RoPE with Tq = ", Tq, " queries over Tk = ", Tk, " keys"),
                "Tq == Tk: cached keys are rotated when they are cached");
}
}  // namespace

void Backend::attention_forward(Tensor out, Tensor lse, Tensor q, Tensor k, Tensor v,
                                std::int64_t B, std::int64_t Tq, std::int64_t Tk, std::int64_t Hq,
                                std::int64_t Hkv, std::int64_t hd, Tensor positions,
                                const AttentionStrides& strides, Tensor rope_inv_freq) {
  const OpCheck check(*this, "attention_forward");
  check_attention_shape(check, B, Tq, Tk, Hq, Hkv, hd);
  check_attention_positions(check, positions, B, Tq, Tk);
  check_attention_rope(check, rope_inv_freq, Tq, Tk, hd);
  const std::int64_t qw = Hq * hd, kvw = Hkv * hd;
  check_attention_strides(check, strides, qw, kvw);
  const AttentionStrides st = strides.resolved(qw, kvw);
  const DType s = check.storage_tensor("q", q, strided_numel(B * Tq, qw, st.q));
  check.tensor("k", k, {s}, strided_numel(B * Tk, kvw, st.k));
  check.tensor("v", v, {s}, strided_numel(B * Tk, kvw, st.v));
  check.tensor("out", out, {s}, strided_numel(B * Tq, qw, st.out));
  check.tensor("lse", lse, check.fp32(), B * Hq * Tq);
  do_attention_forward(out, lse, q, k, v, B, Tq, Tk, Hq, Hkv, hd, positions, st, rope_inv_freq);
}

void Backend::attention_backward(Tensor dq, Tensor dk, Tensor dv, Tensor dout, Tensor out,
                                 Tensor lse, Tensor q, Tensor k, Tensor v, std::int64_t B,
                                 std::int64_t T, std::int64_t Hq, std::int64_t Hkv, std::int64_t hd,
                                 Tensor positions, const AttentionStrides& strides,
                                 Tensor rope_inv_freq) {
  const OpCheck check(*this, "attention_backward");
  check_attention_shape(check, B, T, T, Hq, Hkv, hd);
  check_attention_positions(check, positions, B, T, T);
  check_attention_rope(check, rope_inv_freq, T, T, hd);
  const std::int64_t qw = Hq * hd, kvw = Hkv * hd, rows = B * T;
  check_attention_strides(check, strides, qw, kvw);
  const AttentionStrides st = strides.resolved(qw, kvw);
  const DType s = check.storage_tensor("q", q, strided_numel(rows, qw, st.q));
  check.tensor("k", k, {s}, strided_numel(rows, kvw, st.k));
  check.tensor("v", v, {s}, strided_numel(rows, kvw, st.v));
  check.tensor("out", out, {s}, strided_numel(rows, qw, st.out));
  check.tensor("dout", dout, {s}, strided_numel(rows, qw, st.dout));
  check.tensor("dq", dq, {s}, strided_numel(rows, qw, st.dq));
  check.tensor("dk", dk, {s}, strided_numel(rows, kvw, st.dk));
  check.tensor("dv", dv, {s}, strided_numel(rows, kvw, st.dv));
  check.tensor("lse", lse, check.fp32(), B * Hq * T);
  do_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, B, T, Hq, Hkv, hd, positions, st,
                        rope_inv_freq);
}

// ---- SwiGLU ----

namespace {
// The rows x width shape of SwiGLU's n elements and the row stride of gate and up.
struct SwigluShape {
  std::int64_t rows, width, stride;
};

SwigluShape swiglu_shape(const OpCheck& check, std::int64_t n, std::int64_t width,
                         std::int64_t gate_up_stride) {
  check.size("n", n);
  check.size("width", width);
  if (width == 0) {
    check.require(gate_up_stride == 0, str("gate_up_stride = ", gate_up_stride, " without a width"),
                  "0: dense tensors are one run of n elements");
    return {1, n, n};
  }
  check.require(n % width == 0, str("n = ", n, " over rows of width ", width), "whole rows");
  const std::int64_t stride = row_stride_or(gate_up_stride, width);
  check.require(stride >= width, str("gate_up_stride = ", gate_up_stride, " for rows of ", width),
                "0 (dense) or at least the width");
  return {n / width, width, stride};
}
}  // namespace

void Backend::swiglu_forward(Tensor h, Tensor gate, Tensor up, std::int64_t n, std::int64_t width,
                             std::int64_t gate_up_stride) {
  const OpCheck check(*this, "swiglu_forward");
  const SwigluShape shape = swiglu_shape(check, n, width, gate_up_stride);
  const std::int64_t strided = strided_numel(shape.rows, shape.width, shape.stride);
  const DType s = check.storage_tensor("gate", gate, strided);
  check.tensor("up", up, {s}, strided);
  check.tensor("h", h, {s}, n);
  if (shape.stride != shape.width) {  // in place only elementwise, over dense tensors
    check.separate("h", h, "gate", gate);
    check.separate("h", h, "up", up);
  }
  do_swiglu_forward(h, gate, up, shape.rows, shape.width, shape.stride);
}

void Backend::swiglu_backward(Tensor dgate, Tensor dup, Tensor dh, Tensor gate, Tensor up,
                              std::int64_t n, std::int64_t width, std::int64_t gate_up_stride) {
  const OpCheck check(*this, "swiglu_backward");
  const SwigluShape shape = swiglu_shape(check, n, width, gate_up_stride);
  const std::int64_t strided = strided_numel(shape.rows, shape.width, shape.stride);
  const DType s = check.storage_tensor("gate", gate, strided);
  check.tensor("up", up, {s}, strided);
  check.tensor("dh", dh, {s}, n);
  check.tensor("dgate", dgate, {s}, strided);
  check.tensor("dup", dup, {s}, strided);
  if (shape.stride != shape.width) {
    check.separate("dh", dh, "dgate", dgate);
    check.separate("dh", dh, "dup", dup);
  }
  do_swiglu_backward(dgate, dup, dh, gate, up, shape.rows, shape.width, shape.stride);
}

// ---- losses ----

void Backend::cross_entropy(Tensor losses, Tensor logits, Tensor targets, std::int64_t rows,
                            std::int64_t V, float grad_scale) {
  const OpCheck check(*this, "cross_entropy");
  check.size("rows", rows);
  check.positive("V", V);
  check.storage_tensor("logits", logits, rows * V);
  check.tensor("targets", targets, {DType::I32}, rows);
  check.tensor("losses", losses, check.fp32(), rows);
  do_cross_entropy(losses, logits, targets, rows, V, grad_scale);
}

void Backend::kl_divergence(Tensor losses, Tensor student_logits, Tensor teacher_logits,
                            std::int64_t rows, std::int64_t V, float temperature,
                            float grad_scale) {
  const OpCheck check(*this, "kl_divergence");
  check.size("rows", rows);
  check.positive("V", V);
  check.require(temperature > 0, str("temperature = ", temperature), "a temperature > 0");
  const DType s = check.storage_tensor("student_logits", student_logits, rows * V);
  check.tensor("teacher_logits", teacher_logits, {s}, rows * V);
  check.tensor("losses", losses, check.fp32(), rows);
  do_kl_divergence(losses, student_logits, teacher_logits, rows, V, temperature, grad_scale);
}

// ---- optimizer ----

void Backend::adamw_update(Tensor params, Tensor master, Tensor grads, Tensor m, Tensor v,
                           const AdamWStep& step) {
  const OpCheck check(*this, "adamw_update");
  const std::int64_t n = params.numel;
  const DType s = check.storage_tensor("params", params, n);
  check.tensor("grads", grads, check.parameter_gradient(), n);
  check.tensor("m", m, check.fp32(), n);
  check.tensor("v", v, check.fp32(), n);
  if (check.fp32().contains(s))
    check.require(master.empty(), str("a master copy of ", dtype_name(s), " parameters"),
                  "no master: the parameters are already full precision");
  else
    check.tensor("master", master, {DType::F32}, n);
  do_adamw_update(params, master, grads, m, v, step);
}

// ---- observers ----

void Backend::reduce_over_sequence(Tensor out, Tensor act, std::int64_t B, std::int64_t T,
                                   std::int64_t C, SequenceReduction reduction) {
  const OpCheck check(*this, "reduce_over_sequence");
  check.size("B", B);
  check.size("T", T);
  check.size("C", C);
  check.storage_tensor("act", act, B * T * C);
  check.tensor("out", out, check.fp32(), B * C);
  do_reduce_over_sequence(out, act, B, T, C, reduction);
}

void Backend::row_cosine(Tensor out, Tensor a, Tensor b, std::int64_t rows, std::int64_t C) {
  const OpCheck check(*this, "row_cosine");
  check.size("rows", rows);
  check.size("C", C);
  const DType s = check.storage_tensor("a", a, rows * C);
  check.tensor("b", b, {s}, rows * C);
  check.tensor("out", out, check.fp32(), rows);
  do_row_cosine(out, a, b, rows, C);
}

}  // namespace minitron
