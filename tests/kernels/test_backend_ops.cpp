// The op conformance table, in the spirit of ggml's test-backend-ops: every op of the Backend
// (core/backend.h) declared once below, with the shapes it runs at, the outputs compared and a
// tolerance per engine storage dtype with its reason, run on every engine against the CPU
// reference of kernels/<op>.h evaluated in double on the very values the engine stored (inputs
// rounded to bf16 first on a bf16 engine). Shapes are small and odd (1, 3, 67, 130: not
// multiples of a vector width, block or tile) with several heads and KV groups.
//
// Engines: built with the CUDA emulator (test_backend_ops), "cpu", "cpu-f64" and the emulated
// CUDA engine; built against the real CUDA engine (test_backend_ops_cuda), "cuda", skipped with
// make_cuda_backend's reason where no GPU is present (and by bench/gpu_check.sh on a lent GPU). The
// two cannot share a binary: the emulated engine defines the same symbols as the real one.
//
// Adding an op: one add_entry() below. The machinery (seeded inputs, upload, run, download,
// compare and the failure line naming the worst element) is in backend_op_case.h.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/adamw.h"
#include "kernels/attention.h"
#include "kernels/cuda/cuda_backend_factory.h"
#include "kernels/embedding.h"
#include "kernels/loss.h"
#include "kernels/make_backend.h"
#include "kernels/reduce.h"
#include "kernels/residual_rmsnorm.h"
#include "kernels/rmsnorm.h"
#include "kernels/rope.h"
#include "kernels/swiglu.h"
#include "tests/kernels/backend_op_case.h"

namespace minitron::test {
namespace {

constexpr double kBf16Rounding = 1.0 / 256;  // 8 significant bits: 2^-8 relative per rounding
// One bf16 rounding of an fp32 result that is itself good to a few fp32 ulps (~1e-6 relative).
constexpr double kBf16AfterFp32 = kBf16Rounding + 1e-6;

// ---- shapes: each op's sizes by name, and a label for the test name ----

struct Length {
  std::int64_t n;
  std::string label() const { return str("n", n); }
};
struct Gemm {
  std::int64_t M, N, K;
  std::string label() const { return str("M", M, "_N", N, "_K", K); }
};
struct Rows {  // N rows of D (norms, cosine, losses with D = vocabulary)
  std::int64_t N, D;
  std::string label() const { return str("N", N, "_D", D); }
};
struct Lookup {
  std::int64_t N, D, vocab;
  std::string label() const { return str("N", N, "_D", D, "_vocab", vocab); }
};
struct Sequence {
  std::int64_t B, T, C;
  std::string label() const { return str("B", B, "_T", T, "_C", C); }
};
struct Rotary {
  std::int64_t B, T, heads, head_dim, offset;
  std::string label() const {
    return str("B", B, "_T", T, "_H", heads, "_hd", head_dim, "_pos", offset);
  }
};
struct Heads {
  std::int64_t B, Tq, Tk, Hq, Hkv, hd;
  std::string label() const {
    return str("B", B, "_Tq", Tq, "_Tk", Tk, "_Hq", Hq, "_Hkv", Hkv, "_hd", hd);
  }
};
// Rows of packed documents (the ops' `positions`): documents[b] lists row b's document lengths,
// which sum to the same T in every row.
struct Packed {
  std::int64_t Hq, Hkv, hd;
  std::vector<std::vector<std::int64_t>> documents;
  std::int64_t B() const { return static_cast<std::int64_t>(documents.size()); }
  std::int64_t T() const {
    std::int64_t T = 0;
    for (std::int64_t length : documents.front()) T += length;
    return T;
  }
  // 0, 1, ..., length - 1 for each document in turn.
  std::vector<std::int32_t> positions() const {
    std::vector<std::int32_t> p;
    for (const auto& row : documents)
      for (std::int64_t length : row)
        for (std::int64_t i = 0; i < length; ++i) p.push_back(static_cast<std::int32_t>(i));
    return p;
  }
  std::string label() const {
    std::string docs;
    for (const auto& row : documents) {
      docs += "_docs";
      for (std::int64_t length : row) docs += str("x", length);
    }
    return str("B", B(), "_T", T(), "_Hq", Hq, "_Hkv", Hkv, "_hd", hd, docs);
  }
};

// The shape's positions on the engine, for the run of one case.
BackendBuffer upload_positions(Backend& b, const Packed& s) {
  const std::vector<std::int32_t> host = s.positions();
  BackendBuffer positions(b, static_cast<std::int64_t>(host.size()), DType::I32);
  b.upload_i32(positions, host.data());
  return positions;
}

const std::vector<Length> kLengths = {{1}, {3}, {67}, {130}, {1031}};
const std::vector<Rows> kRows = {{1, 1}, {3, 67}, {5, 130}, {2, 1031}};

// A tolerance for results that every engine computes exactly (copies, gathers, zero).
constexpr Tolerances kExact = {
    {0, 0, "exact: a copy or gather of values the reference holds as stored"},
    {0, 0, "exact: a copy or gather of values the reference holds as stored"},
    {0, 0, "exact: a copy or gather of values the reference holds as stored"}};

// ---- the table ----

void add_memory_ops(std::vector<OpCase>& cases) {
  // The inputs go through upload() and come back through download_f64(): nothing in between.
  add_entry<Length>(cases, {.name = "upload_download",
                            .shapes = kLengths,
                            .tensors =
                                [](const Length& s) {
                                  return std::vector<TensorSpec>{
                                      {"x", Role::Activation, s.n, Fill::Random, -100, 100},
                                      {"g", Role::Gradient, s.n},
                                      {"stat", Role::Statistic, s.n}};
                                },
                            .run = [](Backend&, EngineTensors&, const Length&) {},
                            .reference = [](HostTensors&, const Length&) {},
                            .compared = {"x", "g", "stat"},
                            .tolerance = kExact});
  add_entry<Length>(cases,
                    {.name = "zero",
                     .shapes = kLengths,
                     .tensors =
                         [](const Length& s) {
                           return std::vector<TensorSpec>{{"x", Role::Activation, s.n}};
                         },
                     .run = [](Backend& b, EngineTensors& t, const Length&) { b.zero(t["x"]); },
                     .reference =
                         [](HostTensors& h, const Length&) {
                           std::fill(h.values("x").begin(), h.values("x").end(), 0.0);
                         },
                     .compared = {"x"},
                     .tolerance = kExact});
  add_entry<Length>(
      cases,
      {.name = "copy_widen",
       .shapes = kLengths,
       .tensors =
           [](const Length& s) {
             return std::vector<TensorSpec>{{"src", Role::Activation, s.n},
                                            {"dst", Role::Statistic, s.n, Fill::Poison}};
           },
       .run = [](Backend& b, EngineTensors& t, const Length&) { b.copy(t["dst"], t["src"]); },
       .reference = [](HostTensors& h, const Length&) { h.values("dst") = h.values("src"); },
       .compared = {"dst"},
       .tolerance = kExact});
  add_entry<Length>(
      cases,
      {.name = "copy_narrow",
       .shapes = kLengths,
       .tensors =
           [](const Length& s) {
             return std::vector<TensorSpec>{{"src", Role::Statistic, s.n},
                                            {"dst", Role::Activation, s.n, Fill::Poison}};
           },
       .run = [](Backend& b, EngineTensors& t, const Length&) { b.copy(t["dst"], t["src"]); },
       .reference = [](HostTensors& h, const Length&) { h.values("dst") = h.values("src"); },
       .compared = {"dst"},
       .tolerance = {{kBf16Rounding, 0, "one rounding of an fp32 value to bf16"},
                     {0, 0, "exact: f32 to f32"},
                     {0, 0, "exact: f64 to f64"}}});
}

void add_algebra_ops(std::vector<OpCase>& cases) {
  add_entry<Length>(cases, {.name = "add_inplace",
                            .shapes = kLengths,
                            .tensors =
                                [](const Length& s) {
                                  return std::vector<TensorSpec>{{"dst", Role::Activation, s.n},
                                                                 {"src", Role::Activation, s.n}};
                                },
                            .run = [](Backend& b, EngineTensors& t,
                                      const Length&) { b.add_inplace(t["dst"], t["src"]); },
                            .reference =
                                [](HostTensors& h, const Length& s) {
                                  for (std::int64_t i = 0; i < s.n; ++i) h("dst")[i] += h("src")[i];
                                },
                            .compared = {"dst"},
                            .tolerance = {{kBf16Rounding, 0, "one bf16 rounding of the exact sum"},
                                          {1.0 / (1 << 24), 0, "one fp32 rounding"},
                                          {1.0 / (1ll << 53), 0, "one f64 rounding"}}});
  add_entry<Length>(
      cases,
      {.name = "scale_inplace",
       .shapes = kLengths,
       .tensors =
           [](const Length& s) {
             return std::vector<TensorSpec>{{"x", Role::Activation, s.n}};
           },
       .run = [](Backend& b, EngineTensors& t, const Length&) { b.scale_inplace(t["x"], 1.0 / 3); },
       .reference =
           [](HostTensors& h, const Length& s) {
             for (std::int64_t i = 0; i < s.n; ++i) h("x")[i] *= 1.0 / 3;
           },
       .compared = {"x"},
       .tolerance = {{kBf16Rounding + 1.0 / (1 << 23), 0,
                      "the factor rounded to float, an fp32 product, one bf16 rounding"},
                     {1.0 / (1 << 23), 0, "the factor rounded to float, one fp32 rounding"},
                     {1.0 / (1ll << 53), 0, "one f64 rounding of the product"}}});
  add_entry<Length>(
      cases,
      {.name = "sum_of_squares",
       .shapes = kLengths,
       .tensors =
           [](const Length& s) {
             return std::vector<TensorSpec>{{"x", Role::Activation, s.n}};
           },
       .run = [](Backend& b, EngineTensors& t,
                 const Length&) { t.record("sum", b.sum_of_squares(t["x"])); },
       .reference = [](HostTensors& h,
                       const Length& s) { h.set("sum", {cpu::sum_of_squares(h("x"), s.n)}); },
       .compared = {"sum"},
       .tolerance = {{1e-12, 0, "squares of stored values summed in double: n x 2^-53"},
                     {1e-12, 0, "squares of stored values summed in double: n x 2^-53"},
                     {1e-12, 0, "squares summed in double: n x 2^-53"}}});

  // op(a) @ op(b) for the four transpose combinations; once overwriting an activation
  // (beta = 0 on a NaN-poisoned output) and once accumulating into a gradient (alpha, beta).
  const std::vector<Gemm> gemms = {{1, 1, 1}, {3, 5, 7}, {19, 23, 67}, {130, 3, 67}, {2, 67, 130}};
  const Tolerances gemm_tolerance = {
      {kBf16AfterFp32, 1e-5,
       "one bf16 rounding of the result; fp32 sums of up to 130 products of |x| <= 1 (~1e-6)"},
      {1e-6, 1e-5,
       "fp32 sums of up to 130 products of |x| <= 1: ~sqrt(K) 2^-24 of their magnitude"},
      {1e-13, 1e-13, "f64 sums of up to 130 products: K 2^-53"}};
  for (const bool trans_a : {false, true}) {
    for (const bool trans_b : {false, true}) {
      for (const bool accumulate : {false, true}) {
        const float alpha = accumulate ? 0.75f : 1.0f, beta = accumulate ? 1.0f : 0.0f;
        add_entry<Gemm>(
            cases,
            {.name = str("matmul_", trans_a ? "T" : "N", trans_b ? "T" : "N",
                         accumulate ? "_accumulate" : ""),
             .shapes = gemms,
             .tensors =
                 [accumulate](const Gemm& s) {
                   return std::vector<TensorSpec>{
                       {"a", Role::Activation, s.M * s.K},
                       {"b", Role::Activation, s.K * s.N},
                       accumulate ? TensorSpec{"out", Role::Gradient, s.M * s.N}
                                  : TensorSpec{"out", Role::Activation, s.M * s.N, Fill::Poison}};
                 },
             .run =
                 [=](Backend& b, EngineTensors& t, const Gemm& s) {
                   b.matmul(t["out"], t["a"], t["b"], s.M, s.N, s.K, trans_a, trans_b, alpha, beta);
                 },
             .reference =
                 [=](HostTensors& h, const Gemm& s) {
                   const double* a = h("a");
                   const double* b = h("b");
                   double* out = h("out");
                   for (std::int64_t i = 0; i < s.M; ++i) {
                     for (std::int64_t j = 0; j < s.N; ++j) {
                       double sum = 0;
                       for (std::int64_t p = 0; p < s.K; ++p)
                         sum += (trans_a ? a[p * s.M + i] : a[i * s.K + p]) *
                                (trans_b ? b[j * s.K + p] : b[p * s.N + j]);
                       const double prior = beta == 0 ? 0.0 : beta * out[i * s.N + j];
                       out[i * s.N + j] = alpha * sum + prior;
                     }
                   }
                 },
             .compared = {"out"},
             .tolerance = gemm_tolerance});
      }
    }
  }
}

void add_embedding_and_norm_ops(std::vector<OpCase>& cases) {
  const std::vector<Lookup> lookups = {{1, 1, 1}, {3, 67, 5}, {13, 130, 7}};
  add_entry<Lookup>(cases, {.name = "embedding_forward",
                            .shapes = lookups,
                            .tensors =
                                [](const Lookup& s) {
                                  return std::vector<TensorSpec>{
                                      {"tokens", Role::Ids, s.N, Fill::Random, 0, double(s.vocab)},
                                      {"table", Role::Activation, s.vocab * s.D},
                                      {"out", Role::Activation, s.N * s.D, Fill::Poison}};
                                },
                            .run =
                                [](Backend& b, EngineTensors& t, const Lookup& s) {
                                  b.embedding_forward(t["out"], t["tokens"], t["table"], s.N, s.D);
                                },
                            .reference =
                                [](HostTensors& h, const Lookup& s) {
                                  cpu::embedding_forward(h("out"), h.ids("tokens"), h("table"), s.N,
                                                         s.D, s.vocab);
                                },
                            .compared = {"out"},
                            .tolerance = kExact});
  // 13 tokens over a vocabulary of 7: rows of the table receive several additions.
  add_entry<Lookup>(
      cases,
      {.name = "embedding_backward",
       .shapes = lookups,
       .tensors =
           [](const Lookup& s) {
             return std::vector<TensorSpec>{
                 {"tokens", Role::Ids, s.N, Fill::Random, 0, double(s.vocab)},
                 {"dout", Role::Activation, s.N * s.D},
                 {"dtable", Role::Gradient, s.vocab * s.D}};
           },
       .run =
           [](Backend& b, EngineTensors& t, const Lookup& s) {
             b.embedding_backward(t["dtable"], t["dout"], t["tokens"], s.N, s.D);
           },
       .reference =
           [](HostTensors& h, const Lookup& s) {
             cpu::embedding_backward(h("dtable"), h("dout"), h.ids("tokens"), s.N, s.D, s.vocab);
           },
       .compared = {"dtable"},
       .tolerance = {{1e-6, 1e-6, "fp32 sums of up to 13 values of |x| <= 1 into an fp32 gradient"},
                     {1e-6, 1e-6, "fp32 sums of up to 13 values of |x| <= 1"},
                     {1e-15, 1e-15, "f64 sums of up to 13 values"}}});

  const float eps = 1e-5f;
  const Tolerances norm_tolerance = {
      {3 * kBf16Rounding, 1e-6,
       "x * rstd rounded to bf16, times weight rounded again; residual_out rounded first"},
      {1e-6, 1e-7, "fp32 products and one rounding after a sum of squares taken in double"},
      {1e-14, 1e-15, "f64 throughout"}};
  add_entry<Rows>(
      cases, {.name = "rmsnorm_forward",
              .shapes = kRows,
              .tensors =
                  [](const Rows& s) {
                    return std::vector<TensorSpec>{
                        {"in", Role::Activation, s.N * s.D, Fill::Random, -2, 2},
                        {"weight", Role::Activation, s.D, Fill::Random, 0.5, 1.5},
                        {"out", Role::Activation, s.N * s.D, Fill::Poison},
                        {"rstd", Role::Statistic, s.N, Fill::Poison}};
                  },
              .run =
                  [=](Backend& b, EngineTensors& t, const Rows& s) {
                    b.rmsnorm_forward(t["out"], t["rstd"], t["in"], t["weight"], s.N, s.D, eps);
                  },
              .reference =
                  [=](HostTensors& h, const Rows& s) {
                    cpu::rmsnorm_forward(h("out"), h("rstd"), h("in"), h("weight"), s.N, s.D, eps);
                  },
              .compared = {"out", "rstd"},
              .tolerance = norm_tolerance});
  // din and dweight accumulate, so both start from values. rstd is any positive value: the
  // backward's arithmetic does not depend on where it came from.
  add_entry<Rows>(
      cases,
      {.name = "rmsnorm_backward",
       .shapes = kRows,
       .tensors =
           [](const Rows& s) {
             return std::vector<TensorSpec>{
                 {"in", Role::Activation, s.N * s.D},
                 {"weight", Role::Activation, s.D, Fill::Random, 0.5, 1.5},
                 {"rstd", Role::Statistic, s.N, Fill::Random, 0.5, 1},
                 {"dout", Role::Activation, s.N * s.D},
                 {"din", Role::Activation, s.N * s.D},
                 {"dweight", Role::Gradient, s.D}};
           },
       .run =
           [](Backend& b, EngineTensors& t, const Rows& s) {
             b.rmsnorm_backward(t["din"], t["dweight"], t["dout"], t["in"], t["weight"], t["rstd"],
                                s.N, s.D);
           },
       .reference =
           [](HostTensors& h, const Rows& s) {
             cpu::rmsnorm_backward(h("din"), h("dweight"), h("dout"), h("in"), h("weight"),
                                   h("rstd"), s.N, s.D);
           },
       .compared = {"din", "dweight"},
       .tolerance = {{kBf16AfterFp32, 5 * kBf16Rounding,
                      "din: one bf16 rounding; dweight: up to 5 rows of |dout * x * rstd| <= 1, x "
                      "* rstd rounded to bf16 in each"},
                     {1e-6, 1e-6, "fp32 products and sums over up to 1031 channels of |.| <= 1.5"},
                     {1e-13, 1e-13, "f64 sums over up to 1031 channels"}}});
  for (const bool in_place : {false, true}) {
    // In place: the branch's buffer receives the sum (the only overlap allowed).
    add_entry<Rows>(
        cases, {.name = in_place ? "residual_rmsnorm_forward_in_place" : "residual_rmsnorm_forward",
                .shapes = kRows,
                .tensors =
                    [](const Rows& s) {
                      return std::vector<TensorSpec>{
                          {"residual", Role::Activation, s.N * s.D, Fill::Random, -2, 2},
                          {"branch", Role::Activation, s.N * s.D},
                          {"weight", Role::Activation, s.D, Fill::Random, 0.5, 1.5},
                          {"residual_out", Role::Activation, s.N * s.D, Fill::Poison},
                          {"out", Role::Activation, s.N * s.D, Fill::Poison},
                          {"rstd", Role::Statistic, s.N, Fill::Poison}};
                    },
                .run =
                    [=](Backend& b, EngineTensors& t, const Rows& s) {
                      const Tensor sum = in_place ? t["branch"] : t["residual_out"];
                      b.residual_rmsnorm_forward(sum, t["out"], t["rstd"], t["residual"],
                                                 t["branch"], t["weight"], s.N, s.D, eps);
                    },
                .reference =
                    [=](HostTensors& h, const Rows& s) {
                      double* sum = in_place ? h("branch") : h("residual_out");
                      cpu::residual_rmsnorm_forward(sum, h("out"), h("rstd"), h("residual"),
                                                    h("branch"), h("weight"), s.N, s.D, eps);
                    },
                .compared = {in_place ? "branch" : "residual_out", "out", "rstd"},
                .tolerance = norm_tolerance});
  }
}

void add_rope_and_attention_ops(std::vector<OpCase>& cases) {
  const std::vector<Rotary> rotaries = {{1, 1, 1, 2, 0}, {2, 3, 3, 16, 5}, {1, 67, 2, 64, 1000}};
  for (const bool forward : {true, false}) {
    add_entry<Rotary>(
        cases,
        {.name = forward ? "rope_forward" : "rope_backward",
         .shapes = rotaries,
         .tensors =
             [](const Rotary& s) {
               return std::vector<TensorSpec>{
                   {"x", Role::Activation, s.B * s.T * s.heads * s.head_dim},
                   {"inv_freq", Role::Statistic, s.head_dim / 2, Fill::Random, 0, 1}};
             },
         .run =
             [=](Backend& b, EngineTensors& t, const Rotary& s) {
               if (forward)
                 b.rope_forward(t["x"], t["inv_freq"], s.B, s.T, s.heads, s.head_dim, s.offset);
               else
                 b.rope_backward(t["x"], t["inv_freq"], s.B, s.T, s.heads, s.head_dim, s.offset);
             },
         .reference =
             [=](HostTensors& h, const Rotary& s) {
               const std::vector<float> inv_freq(h.values("inv_freq").begin(),
                                                 h.values("inv_freq").end());
               if (forward)
                 cpu::rope_forward(h("x"), inv_freq.data(), s.B, s.T, s.heads, s.head_dim,
                                   s.offset);
               else
                 cpu::rope_backward(h("x"), inv_freq.data(), s.B, s.T, s.heads, s.head_dim,
                                    s.offset);
             },
         .compared = {"x"},
         .tolerance =
             {{kBf16AfterFp32, kBf16Rounding,
               "one bf16 rounding of a cos - b sin, whose error scales with |a| + |b| <= 2"},
              {1e-6, 1e-6, "fp32 cos/sin of the same float angle and one rounding; |a| + |b| <= 2"},
              {1e-14, 1e-14, "f64 cos/sin of the same float angle"}}});
  }

  // Packed documents: RoPE at positions that restart in each document.
  const std::vector<Packed> packed_rotaries = {{3, 3, 16, {{1, 4, 2}, {5, 1, 1}}},
                                               {2, 2, 64, {{40, 27}}}};
  for (const bool forward : {true, false}) {
    add_entry<Packed>(
        cases,
        {.name = forward ? "rope_forward_packed" : "rope_backward_packed",
         .shapes = packed_rotaries,
         .tensors =
             [](const Packed& s) {
               return std::vector<TensorSpec>{
                   {"x", Role::Activation, s.B() * s.T() * s.Hq * s.hd},
                   {"inv_freq", Role::Statistic, s.hd / 2, Fill::Random, 0, 1}};
             },
         .run =
             [=](Backend& b, EngineTensors& t, const Packed& s) {
               const BackendBuffer positions = upload_positions(b, s);
               if (forward)
                 b.rope_forward(t["x"], t["inv_freq"], s.B(), s.T(), s.Hq, s.hd, 0, positions);
               else
                 b.rope_backward(t["x"], t["inv_freq"], s.B(), s.T(), s.Hq, s.hd, 0, positions);
               b.synchronize();  // before the positions are freed
             },
         .reference =
             [=](HostTensors& h, const Packed& s) {
               const std::vector<float> inv_freq(h.values("inv_freq").begin(),
                                                 h.values("inv_freq").end());
               const std::vector<std::int32_t> positions = s.positions();
               if (forward)
                 cpu::rope_forward(h("x"), inv_freq.data(), s.B(), s.T(), s.Hq, s.hd, 0,
                                   positions.data());
               else
                 cpu::rope_backward(h("x"), inv_freq.data(), s.B(), s.T(), s.Hq, s.hd, 0,
                                    positions.data());
             },
         .compared = {"x"},
         .tolerance =
             {{kBf16AfterFp32, kBf16Rounding,
               "one bf16 rounding of a cos - b sin, whose error scales with |a| + |b| <= 2"},
              {1e-6, 1e-6, "fp32 cos/sin of the same float angle and one rounding; |a| + |b| <= 2"},
              {1e-14, 1e-14, "f64 cos/sin of the same float angle"}}});
  }

  // GQA (groups of 2 and 3), a KV-cache forward (Tq < Tk), sequences off the 16/32/64 tiles.
  const std::vector<Heads> forward_shapes = {{1, 1, 1, 1, 1, 16},
                                             {2, 17, 17, 4, 2, 32},
                                             {1, 5, 23, 3, 1, 16},
                                             {1, 67, 67, 2, 1, 64},
                                             {1, 33, 33, 4, 2, 128}};
  const auto attention_tensors = [](const Heads& s) {
    return std::vector<TensorSpec>{
        {"q", Role::Activation, s.B * s.Tq * s.Hq * s.hd, Fill::Random, -2, 2},
        {"k", Role::Activation, s.B * s.Tk * s.Hkv * s.hd, Fill::Random, -2, 2},
        {"v", Role::Activation, s.B * s.Tk * s.Hkv * s.hd},
        {"out", Role::Activation, s.B * s.Tq * s.Hq * s.hd, Fill::Poison},
        {"lse", Role::Statistic, s.B * s.Hq * s.Tq, Fill::Poison}};
  };
  add_entry<Heads>(
      cases,
      {.name = "attention_forward",
       .shapes = forward_shapes,
       .tensors = attention_tensors,
       .run =
           [](Backend& b, EngineTensors& t, const Heads& s) {
             b.attention_forward(t["out"], t["lse"], t["q"], t["k"], t["v"], s.B, s.Tq, s.Tk, s.Hq,
                                 s.Hkv, s.hd);
           },
       .reference =
           [](HostTensors& h, const Heads& s) {
             cpu::attention_forward(h("out"), h("lse"), h("q"), h("k"), h("v"), s.B, s.Tq, s.Tk,
                                    s.Hq, s.Hkv, s.hd);
           },
       .compared = {"out", "lse"},
       .tolerance =
           {{kBf16Rounding, kBf16Rounding,
             "probabilities rounded to bf16 before they weigh |v| <= 1, one bf16 rounding of out"},
            {1e-5, 1e-6, "fp32 softmax over up to 67 keys; out is a convex mix of |v| <= 1"},
            {1e-13, 1e-13, "f64 softmax over up to 67 keys"}}});
  // The backward reads out and lse as the forward leaves them: the reference's forward on the
  // stored q, k, v, then stored itself.
  std::vector<Heads> backward_shapes;
  for (const Heads& s : forward_shapes)
    if (s.Tq == s.Tk) backward_shapes.push_back(s);
  add_entry<Heads>(
      cases,
      {.name = "attention_backward",
       .shapes = backward_shapes,
       .tensors =
           [=](const Heads& s) {
             std::vector<TensorSpec> specs = attention_tensors(s);
             for (TensorSpec& spec : specs)  // out and lse are inputs here, set by prepare
               if (spec.name == "out" || spec.name == "lse") spec.fill = Fill::Random;
             const std::int64_t nq = s.B * s.Tq * s.Hq * s.hd, nkv = s.B * s.Tk * s.Hkv * s.hd;
             specs.push_back({"dout", Role::Activation, nq});
             specs.push_back({"dq", Role::Activation, nq, Fill::Poison});
             specs.push_back({"dk", Role::Activation, nkv, Fill::Poison});
             specs.push_back({"dv", Role::Activation, nkv, Fill::Poison});
             return specs;
           },
       .run =
           [](Backend& b, EngineTensors& t, const Heads& s) {
             b.attention_backward(t["dq"], t["dk"], t["dv"], t["dout"], t["out"], t["lse"], t["q"],
                                  t["k"], t["v"], s.B, s.Tq, s.Hq, s.Hkv, s.hd);
           },
       .reference =
           [](HostTensors& h, const Heads& s) {
             cpu::attention_backward(h("dq"), h("dk"), h("dv"), h("dout"), h("out"), h("lse"),
                                     h("q"), h("k"), h("v"), s.B, s.Tq, s.Tk, s.Hq, s.Hkv, s.hd);
           },
       .compared = {"dq", "dk", "dv"},
       .tolerance = {{2 * kBf16Rounding, 2 * kBf16Rounding,
                      "P and dS rounded to bf16 before the products, whose |.| sums stay below ~2 "
                      "here; one rounding of the result"},
                     {2e-6, 2e-6, "fp32 sums over up to 67 keys of terms |.| <~ 4"},
                     {1e-13, 1e-13, "f64 sums over up to 67 keys"}},
       .prepare =
           [](HostTensors& h, const Heads& s) {
             cpu::attention_forward(h("out"), h("lse"), h("q"), h("k"), h("v"), s.B, s.Tq, s.Tk,
                                    s.Hq, s.Hkv, s.hd);
           }});

  // Packed documents against the reference's own packed attention (tests/kernels/
  // test_packed_attention.cpp checks that against each document run alone): 8 KV heads in
  // groups of 2 with a 1-token document first and one inside a row, documents across the 16-,
  // 32- and 64-row tiles; a 130 + 70 row at head_dim 64, where the tensor-core kernels skip whole
  // key tiles (forward, dq) and query tiles (dk/dv) of the other document.
  const std::vector<Packed> packed_shapes = {{16, 8, 16, {{1, 40, 27, 32}, {70, 1, 29}}},
                                             {2, 1, 64, {{130, 70}}}};
  const auto packed_tensors = [](const Packed& s) {
    const std::int64_t nq = s.B() * s.T() * s.Hq * s.hd, nkv = s.B() * s.T() * s.Hkv * s.hd;
    return std::vector<TensorSpec>{{"q", Role::Activation, nq, Fill::Random, -2, 2},
                                   {"k", Role::Activation, nkv, Fill::Random, -2, 2},
                                   {"v", Role::Activation, nkv},
                                   {"out", Role::Activation, nq, Fill::Poison},
                                   {"lse", Role::Statistic, s.B() * s.Hq * s.T(), Fill::Poison}};
  };
  add_entry<Packed>(
      cases,
      {.name = "attention_forward_packed",
       .shapes = packed_shapes,
       .tensors = packed_tensors,
       .run =
           [](Backend& b, EngineTensors& t, const Packed& s) {
             const BackendBuffer positions = upload_positions(b, s);
             b.attention_forward(t["out"], t["lse"], t["q"], t["k"], t["v"], s.B(), s.T(), s.T(),
                                 s.Hq, s.Hkv, s.hd, positions);
             b.synchronize();
           },
       .reference =
           [](HostTensors& h, const Packed& s) {
             const std::vector<std::int32_t> positions = s.positions();
             cpu::attention_forward(h("out"), h("lse"), h("q"), h("k"), h("v"), s.B(), s.T(), s.T(),
                                    s.Hq, s.Hkv, s.hd, positions.data());
           },
       .compared = {"out", "lse"},
       .tolerance =
           {{kBf16Rounding, kBf16Rounding,
             "probabilities rounded to bf16 before they weigh |v| <= 1, one bf16 rounding of out"},
            {1e-5, 1e-6, "fp32 softmax over up to 130 keys; out is a convex mix of |v| <= 1"},
            {1e-13, 1e-13, "f64 softmax over up to 130 keys"}}});
  add_entry<Packed>(
      cases,
      {.name = "attention_backward_packed",
       .shapes = packed_shapes,
       .tensors =
           [=](const Packed& s) {
             std::vector<TensorSpec> specs = packed_tensors(s);
             for (TensorSpec& spec : specs)  // out and lse are inputs here, set by prepare
               if (spec.name == "out" || spec.name == "lse") spec.fill = Fill::Random;
             const std::int64_t nq = s.B() * s.T() * s.Hq * s.hd;
             const std::int64_t nkv = s.B() * s.T() * s.Hkv * s.hd;
             specs.push_back({"dout", Role::Activation, nq});
             specs.push_back({"dq", Role::Activation, nq, Fill::Poison});
             specs.push_back({"dk", Role::Activation, nkv, Fill::Poison});
             specs.push_back({"dv", Role::Activation, nkv, Fill::Poison});
             return specs;
           },
       .run =
           [](Backend& b, EngineTensors& t, const Packed& s) {
             const BackendBuffer positions = upload_positions(b, s);
             b.attention_backward(t["dq"], t["dk"], t["dv"], t["dout"], t["out"], t["lse"], t["q"],
                                  t["k"], t["v"], s.B(), s.T(), s.Hq, s.Hkv, s.hd, positions);
             b.synchronize();
           },
       .reference =
           [](HostTensors& h, const Packed& s) {
             const std::vector<std::int32_t> positions = s.positions();
             cpu::attention_backward(h("dq"), h("dk"), h("dv"), h("dout"), h("out"), h("lse"),
                                     h("q"), h("k"), h("v"), s.B(), s.T(), s.T(), s.Hq, s.Hkv, s.hd,
                                     positions.data());
           },
       .compared = {"dq", "dk", "dv"},
       .tolerance = {{6 * kBf16Rounding, 6 * kBf16Rounding,
                      "P and dS rounded to bf16 before the products; a key's weights summed over "
                      "its document's queries reach ~H(130) = 5.4; one rounding of the result"},
                     {4e-6, 4e-6, "fp32 sums over up to 130 keys of terms |.| <~ 4"},
                     {1e-13, 1e-13, "f64 sums over up to 130 keys"}},
       .prepare =
           [](HostTensors& h, const Packed& s) {
             const std::vector<std::int32_t> positions = s.positions();
             cpu::attention_forward(h("out"), h("lse"), h("q"), h("k"), h("v"), s.B(), s.T(), s.T(),
                                    s.Hq, s.Hkv, s.hd, positions.data());
           }});
}

// RoPE inside attention (rope_inv_freq) against the reference's RoPE then attention: the forward
// leaves q and k rotated as rope_forward would, the backward's dq and dk are those of the
// unrotated inputs (attention's backward, then RoPE's). Plain rows (row t at position t) and
// packed documents (positions restarting in each document). q and k
// lie in [-0.5, 0.5] so that rounding them to bf16 after the rotation (the reference keeps them
// exact) moves a score by about 2^-8 * 0.7 here, well inside the tolerances.
void add_attention_with_rope_ops(std::vector<OpCase>& cases) {
  const std::vector<Heads> shapes = {
      {1, 1, 1, 1, 1, 16}, {2, 17, 17, 4, 2, 32}, {1, 67, 67, 2, 1, 64}, {1, 33, 33, 4, 2, 128}};
  const std::vector<Packed> packed_shapes = {{4, 2, 16, {{1, 40, 27, 32}, {70, 1, 29}}},
                                             {2, 1, 64, {{130, 70}}}};
  // B, T, Hq, Hkv, hd of either shape; the forward's outputs and the backward's inputs alike.
  struct Dims {
    std::int64_t B, T, Hq, Hkv, hd;
  };
  const auto tensors = [](const Dims& d, bool backward) {
    const std::int64_t nq = d.B * d.T * d.Hq * d.hd, nkv = d.B * d.T * d.Hkv * d.hd;
    const Fill output = backward ? Fill::Random : Fill::Poison;  // backward: set by prepare
    std::vector<TensorSpec> specs = {{"q", Role::Activation, nq, Fill::Random, -0.5, 0.5},
                                     {"k", Role::Activation, nkv, Fill::Random, -0.5, 0.5},
                                     {"v", Role::Activation, nkv},
                                     {"out", Role::Activation, nq, output},
                                     {"lse", Role::Statistic, d.B * d.Hq * d.T, output},
                                     {"inv_freq", Role::Statistic, d.hd / 2, Fill::Random, 0, 1}};
    if (backward) {
      specs.push_back({"dout", Role::Activation, nq});
      specs.push_back({"dq", Role::Activation, nq, Fill::Poison});
      specs.push_back({"dk", Role::Activation, nkv, Fill::Poison});
      specs.push_back({"dv", Role::Activation, nkv, Fill::Poison});
    }
    return specs;
  };
  // The engine's call and the reference's, with positions (packed) or without.
  const auto engine = [](Backend& b, EngineTensors& t, const Dims& d, Tensor positions,
                         bool backward) {
    if (backward)
      b.attention_backward(t["dq"], t["dk"], t["dv"], t["dout"], t["out"], t["lse"], t["q"], t["k"],
                           t["v"], d.B, d.T, d.Hq, d.Hkv, d.hd, positions, {}, t["inv_freq"]);
    else
      b.attention_forward(t["out"], t["lse"], t["q"], t["k"], t["v"], d.B, d.T, d.T, d.Hq, d.Hkv,
                          d.hd, positions, {}, t["inv_freq"]);
    b.synchronize();  // before the positions are freed
  };
  const auto reference = [](HostTensors& h, const Dims& d, const std::int32_t* positions,
                            bool backward) {
    const std::vector<float> inv(h.values("inv_freq").begin(), h.values("inv_freq").end());
    if (backward) {
      cpu::attention_backward(h("dq"), h("dk"), h("dv"), h("dout"), h("out"), h("lse"), h("q"),
                              h("k"), h("v"), d.B, d.T, d.T, d.Hq, d.Hkv, d.hd, positions);
      cpu::rope_backward(h("dq"), inv.data(), d.B, d.T, d.Hq, d.hd, 0, positions);
      cpu::rope_backward(h("dk"), inv.data(), d.B, d.T, d.Hkv, d.hd, 0, positions);
    } else {
      cpu::rope_forward(h("q"), inv.data(), d.B, d.T, d.Hq, d.hd, 0, positions);
      cpu::rope_forward(h("k"), inv.data(), d.B, d.T, d.Hkv, d.hd, 0, positions);
      cpu::attention_forward(h("out"), h("lse"), h("q"), h("k"), h("v"), d.B, d.T, d.T, d.Hq, d.Hkv,
                             d.hd, positions);
    }
  };
  // The backward reads out and lse as the forward leaves them over the (rotated) q and k.
  const auto prepare = [](HostTensors& h, const Dims& d, const std::int32_t* positions) {
    cpu::attention_forward(h("out"), h("lse"), h("q"), h("k"), h("v"), d.B, d.T, d.T, d.Hq, d.Hkv,
                           d.hd, positions);
  };
  const Tolerances forward_tolerance = {
      {3 * kBf16Rounding, 3 * kBf16Rounding,
       "q and k rounded to bf16 after the rotation (scores move ~2^-8 * 0.7), probabilities "
       "rounded before they weigh |v| <= 1, one rounding of out"},
      {1e-5, 1e-6, "fp32 cos/sin of one float angle, then an fp32 softmax over up to 130 keys"},
      {1e-13, 1e-13, "f64 softmax over up to 130 keys"}};
  // A rotation adds the errors of a channel pair (|cos| + |sin| <= sqrt(2)): the plain backward's
  // tolerances (2x and 6x a rounding, attention_backward and _packed) times 1.5.
  const auto backward_tolerance = [](double bf16_roundings, double fp32) {
    return Tolerances{
        {bf16_roundings * kBf16Rounding, bf16_roundings * kBf16Rounding,
         "P and dS rounded to bf16 before the products, a key's weights summed over its queries, "
         "the pair's errors combined by the rotation; one rounding of the result"},
        {fp32, fp32, "fp32 sums over up to 130 keys of terms |.| <~ 1, then a rotation"},
        {1e-13, 1e-13, "f64 sums over up to 130 keys"}};
  };
  for (const bool backward : {false, true}) {
    const char* name = backward ? "attention_backward_rope" : "attention_forward_rope";
    const std::vector<std::string> compared =
        backward ? std::vector<std::string>{"dq", "dk", "dv"}
                 : std::vector<std::string>{"out", "lse", "q", "k"};
    const auto dims = [](const Heads& s) { return Dims{s.B, s.Tq, s.Hq, s.Hkv, s.hd}; };
    add_entry<Heads>(
        cases, {.name = name,
                .shapes = shapes,
                .tensors = [=](const Heads& s) { return tensors(dims(s), backward); },
                .run = [=](Backend& b, EngineTensors& t,
                           const Heads& s) { engine(b, t, dims(s), Tensor{}, backward); },
                .reference = [=](HostTensors& h,
                                 const Heads& s) { reference(h, dims(s), nullptr, backward); },
                .compared = compared,
                .tolerance = backward ? backward_tolerance(3, 3e-6) : forward_tolerance,
                .prepare =
                    [=](HostTensors& h, const Heads& s) {
                      if (backward) prepare(h, dims(s), nullptr);
                    }});
    const auto packed_dims = [](const Packed& s) { return Dims{s.B(), s.T(), s.Hq, s.Hkv, s.hd}; };
    add_entry<Packed>(
        cases, {.name = str(name, "_packed"),
                .shapes = packed_shapes,
                .tensors = [=](const Packed& s) { return tensors(packed_dims(s), backward); },
                .run =
                    [=](Backend& b, EngineTensors& t, const Packed& s) {
                      const BackendBuffer positions = upload_positions(b, s);
                      engine(b, t, packed_dims(s), positions, backward);
                    },
                .reference =
                    [=](HostTensors& h, const Packed& s) {
                      reference(h, packed_dims(s), s.positions().data(), backward);
                    },
                .compared = compared,
                .tolerance = backward ? backward_tolerance(9, 6e-6) : forward_tolerance,
                .prepare =
                    [=](HostTensors& h, const Packed& s) {
                      if (backward) prepare(h, packed_dims(s), s.positions().data());
                    }});
  }
}

void add_elementwise_and_loss_ops(std::vector<OpCase>& cases) {
  const auto swiglu_inputs = [](const Length& s) {
    return std::vector<TensorSpec>{{"gate", Role::Activation, s.n, Fill::Random, -6, 6},
                                   {"up", Role::Activation, s.n, Fill::Random, -2, 2}};
  };
  add_entry<Length>(
      cases,
      {.name = "swiglu_forward",
       .shapes = kLengths,
       .tensors =
           [=](const Length& s) {
             auto specs = swiglu_inputs(s);
             specs.push_back({"h", Role::Activation, s.n, Fill::Poison});
             return specs;
           },
       .run = [](Backend& b, EngineTensors& t,
                 const Length& s) { b.swiglu_forward(t["h"], t["gate"], t["up"], s.n); },
       .reference = [](HostTensors& h,
                       const Length& s) { cpu::swiglu_forward(h("h"), h("gate"), h("up"), s.n); },
       .compared = {"h"},
       .tolerance = {{kBf16AfterFp32, 1e-7, "one bf16 rounding of an fp32 silu(gate) * up"},
                     {1e-6, 1e-7, "fp32 exp and a few products"},
                     {1e-14, 1e-15, "f64 exp and a few products"}}});
  add_entry<Length>(
      cases,
      {.name = "swiglu_backward",
       .shapes = kLengths,
       .tensors =
           [=](const Length& s) {
             auto specs = swiglu_inputs(s);
             specs.push_back({"dh", Role::Activation, s.n});
             specs.push_back({"dgate", Role::Activation, s.n, Fill::Poison});
             specs.push_back({"dup", Role::Activation, s.n, Fill::Poison});
             return specs;
           },
       .run =
           [](Backend& b, EngineTensors& t, const Length& s) {
             b.swiglu_backward(t["dgate"], t["dup"], t["dh"], t["gate"], t["up"], s.n);
           },
       .reference =
           [](HostTensors& h, const Length& s) {
             cpu::swiglu_backward(h("dgate"), h("dup"), h("dh"), h("gate"), h("up"), s.n);
           },
       .compared = {"dgate", "dup"},
       .tolerance =
           {{kBf16AfterFp32, 1e-6,
             "one bf16 rounding of fp32 results; 1 + g (1 - sigmoid g) cancels near g = -1.28"},
            {1e-6, 1e-6, "fp32 exp and a few products; cancellation near g = -1.28"},
            {1e-14, 1e-14, "f64 exp and a few products"}}});

  // Targets drawn from [-V/2, V): about a third of the rows are ignored (negative).
  const std::vector<Rows> chunks = {{1, 1}, {3, 67}, {13, 130}, {2, 1031}};
  for (const float grad_scale : {0.25f, 0.0f}) {
    add_entry<Rows>(
        cases,
        {.name = grad_scale != 0 ? "cross_entropy_with_gradient" : "cross_entropy",
         .shapes = chunks,
         .tensors =
             [](const Rows& s) {
               return std::vector<TensorSpec>{
                   {"logits", Role::Activation, s.N * s.D, Fill::Random, -8, 8},
                   {"targets", Role::Ids, s.N, Fill::Random, -double(s.D / 2), double(s.D)},
                   {"losses", Role::Statistic, s.N, Fill::Poison}};
             },
         .run =
             [=](Backend& b, EngineTensors& t, const Rows& s) {
               b.cross_entropy(t["losses"], t["logits"], t["targets"], s.N, s.D, grad_scale);
             },
         .reference =
             [=](HostTensors& h, const Rows& s) {
               cpu::cross_entropy(h("losses"), h("logits"), h.ids("targets"), s.N, s.D, grad_scale);
             },
         .compared = {"losses", "logits"},
         .tolerance = {{kBf16AfterFp32, 1e-6,
                        "losses: fp32 log-sum-exp over up to 1031 logits (~1e-7); gradient: one "
                        "bf16 rounding"},
                       {1e-6, 1e-6, "fp32 log-sum-exp and exp over up to 1031 logits of |x| <= 8"},
                       {1e-13, 1e-13, "f64 log-sum-exp over up to 1031 logits"}}});
  }
  for (const float temperature : {1.0f, 2.0f}) {
    const float grad_scale = temperature == 1.0f ? 0.0f : 0.5f;
    add_entry<Rows>(
        cases,
        {.name = str("kl_divergence_tau", temperature, grad_scale != 0 ? "_with_gradient" : ""),
         .shapes = chunks,
         .tensors =
             [](const Rows& s) {
               return std::vector<TensorSpec>{
                   {"student", Role::Activation, s.N * s.D, Fill::Random, -4, 4},
                   {"teacher", Role::Activation, s.N * s.D, Fill::Random, -4, 4},
                   {"losses", Role::Statistic, s.N, Fill::Poison}};
             },
         .run =
             [=](Backend& b, EngineTensors& t, const Rows& s) {
               b.kl_divergence(t["losses"], t["student"], t["teacher"], s.N, s.D, temperature,
                               grad_scale);
             },
         .reference =
             [=](HostTensors& h, const Rows& s) {
               cpu::kl_divergence(h("losses"), h("student"), h("teacher"), s.N, s.D, temperature,
                                  grad_scale);
             },
         .compared = {"losses", "student"},
         .tolerance =
             {{kBf16AfterFp32, 1e-6,
               "losses: fp32 sums over up to 1031 terms (~1e-7); gradient: one bf16 rounding"},
              {1e-6, 1e-6, "fp32 sums over up to 1031 terms of KL ~ 1"},
              {1e-13, 1e-13, "f64 sums over up to 1031 terms"}}});
  }
}

void add_optimizer_and_observer_ops(std::vector<OpCase>& cases) {
  AdamWStep step;
  step.learning_rate = 1e-2f;
  step.weight_decay = 0.1f;
  step.step = 3;
  step.grad_scale = 0.5f;
  // On a bf16 engine the update reads and writes the fp32 master copy and rounds it into the
  // parameters; the reference updates the master values (the parameters where there are none).
  add_entry<Length>(
      cases,
      {.name = "adamw_update",
       .shapes = kLengths,
       .tensors =
           [](const Length& s) {
             return std::vector<TensorSpec>{
                 {"params", Role::Activation, s.n},
                 {"master", Role::Master, s.n, Fill::Random, -1, 1, "params"},
                 {"grads", Role::Gradient, s.n},
                 {"m", Role::Statistic, s.n, Fill::Random, -0.1, 0.1},
                 {"v", Role::Statistic, s.n, Fill::Random, 0, 0.01}};
           },
       .run =
           [=](Backend& b, EngineTensors& t, const Length&) {
             b.adamw_update(t["params"], t["master"], t["grads"], t["m"], t["v"], step);
           },
       .reference =
           [=](HostTensors& h, const Length& s) {
             const std::string updated = h.has("master") ? "master" : "params";
             cpu::adamw_update(h(updated), h("grads"), h("m"), h("v"), s.n, step);
             h.values("params") = h.values(updated);
           },
       .compared = {"params", "master", "m", "v"},
       .tolerance = {{kBf16AfterFp32, 1e-7,
                      "params: one bf16 rounding of the fp32 master; master, m, v: fp32 (~1e-7)"},
                     {1e-6, 1e-7, "fp32 arithmetic, a few operations per element"},
                     {1e-14, 1e-15, "f64 arithmetic, a few operations per element"}}});

  const std::vector<Sequence> sequences = {{1, 1, 1}, {2, 3, 67}, {3, 17, 130}};
  for (const SequenceReduction reduction :
       {SequenceReduction::Mean, SequenceReduction::L2, SequenceReduction::Variance}) {
    const char* label = reduction == SequenceReduction::Mean ? "mean"
                        : reduction == SequenceReduction::L2 ? "l2"
                                                             : "variance";
    add_entry<Sequence>(
        cases, {.name = str("reduce_over_sequence_", label),
                .shapes = sequences,
                .tensors =
                    [](const Sequence& s) {
                      return std::vector<TensorSpec>{
                          {"act", Role::Activation, s.B * s.T * s.C, Fill::Random, -3, 3},
                          {"out", Role::Statistic, s.B * s.C, Fill::Poison}};
                    },
                .run =
                    [=](Backend& b, EngineTensors& t, const Sequence& s) {
                      b.reduce_over_sequence(t["out"], t["act"], s.B, s.T, s.C, reduction);
                    },
                .reference =
                    [=](HostTensors& h, const Sequence& s) {
                      cpu::reduce_over_sequence(h("out"), h("act"), s.B, s.T, s.C, reduction);
                    },
                .compared = {"out"},
                .tolerance = {{1e-6, 1e-7,
                               "fp32 sums over up to 17 positions of stored values (|x| <= 3)"},
                              {1e-6, 1e-7, "fp32 sums over up to 17 positions (|x| <= 3)"},
                              {1e-14, 1e-14, "f64 sums over up to 17 positions"}}});
  }
  add_entry<Rows>(
      cases,
      {.name = "row_cosine",
       .shapes = kRows,
       .tensors =
           [](const Rows& s) {
             return std::vector<TensorSpec>{{"a", Role::Activation, s.N * s.D},
                                            {"b", Role::Activation, s.N * s.D},
                                            {"out", Role::Statistic, s.N, Fill::Poison}};
           },
       .run = [](Backend& b, EngineTensors& t,
                 const Rows& s) { b.row_cosine(t["out"], t["a"], t["b"], s.N, s.D); },
       .reference = [](HostTensors& h,
                       const Rows& s) { cpu::row_cosine(h("out"), h("a"), h("b"), s.N, s.D); },
       .compared = {"out"},
       .tolerance = {{1e-6, 1e-7, "fp32 dot products over up to 1031 channels of stored values"},
                     {1e-6, 1e-7, "fp32 dot products over up to 1031 channels"},
                     {1e-14, 1e-14, "f64 dot products over up to 1031 channels"}}});
}

const std::vector<OpCase>& op_table() {
  static const std::vector<OpCase> cases = [] {
    std::vector<OpCase> all;
    add_memory_ops(all);
    add_algebra_ops(all);
    add_embedding_and_norm_ops(all);
    add_rope_and_attention_ops(all);
    add_attention_with_rope_ops(all);
    add_elementwise_and_loss_ops(all);
    add_optimizer_and_observer_ops(all);
    return all;
  }();
  return cases;
}

// ---- engines ----

struct Engine {
  std::string label;
  std::function<std::unique_ptr<Backend>()> make;  // throws Error where the engine is missing
};

std::vector<Engine> engines() {
#if defined(MINITRON_EMULATE)
  return {{"cpu", [] { return make_backend("cpu"); }},
          {"cpu_f64", [] { return make_backend("cpu-f64"); }},
          {"cuda_emulated", [] { return make_cuda_backend(); }}};
#else
  // make_cuda_backend rather than make_backend: bench/gpu builds this file against the CUDA engine
  // alone (no CPU engine, no OpenBLAS on the lent GPU machine).
  return {{"cuda", [] { return make_cuda_backend(); }}};
#endif
}

// gtest prints a failing test's parameters: the engine by its label, not as bytes.
void PrintTo(const Engine& engine, std::ostream* os) { *os << engine.label; }

class BackendOps : public ::testing::TestWithParam<std::tuple<Engine, std::size_t>> {};

TEST_P(BackendOps, MatchesReference) {
  const auto& [engine, index] = GetParam();
  std::unique_ptr<Backend> backend;
  try {
    backend = engine.make();
  } catch (const Error& e) {
    GTEST_SKIP() << engine.label << " engine unavailable: " << e.what();
  }
  run_op_case(*backend, engine.label, op_table()[index]);
}

std::vector<std::size_t> case_indices() {
  std::vector<std::size_t> indices(op_table().size());
  for (std::size_t i = 0; i < indices.size(); ++i) indices[i] = i;
  return indices;
}

INSTANTIATE_TEST_SUITE_P(Table, BackendOps,
                         ::testing::Combine(::testing::ValuesIn(engines()),
                                            ::testing::ValuesIn(case_indices())),
                         [](const ::testing::TestParamInfo<BackendOps::ParamType>& info) {
                           return str(std::get<0>(info.param).label, "_",
                                      op_table()[std::get<1>(info.param)].name);
                         });

}  // namespace
}  // namespace minitron::test
