// The Backend contract (core/backend.h): a wrong call fails with the same one-line message on the
// CPU engines and the emulated CUDA engine, before any engine code runs. Where a message names
// the engine's own dtypes the table writes {act} (its activation dtype) or {fp_or_act} (what
// scale_inplace takes: its storage dtypes and f32).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_backend_factory.h"
#include "kernels/make_backend.h"
#include "tests/util/error_test_util.h"

namespace minitron::test {
namespace {

// Tensors of the engine under test: storage tensors of 4, 6 and 9 elements in its activation
// dtype, fp32 ones of 2 and 6, token ids of 2.
struct ContractTensors {
  explicit ContractTensors(Backend& backend)
      : s4(backend, 4, backend.activation_dtype()),
        s6(backend, 6, backend.activation_dtype()),
        s6b(backend, 6, backend.activation_dtype()),
        s9(backend, 9, backend.activation_dtype()),
        f2(backend, 2, DType::F32),
        f6(backend, 6, DType::F32),
        i2(backend, 2, DType::I32) {}
  BackendBuffer s4, s6, s6b, s9, f2, f6, i2;
};

struct WrongCall {
  std::string name;
  std::function<void(Backend&, ContractTensors&)> call;
  std::string message;
};

std::vector<WrongCall> wrong_calls() {
  return {
      {"allocate_negative", [](Backend& b, ContractTensors&) { b.allocate(-1, DType::F32); },
       "allocate: numel = -1 (expected a size >= 0)"},
      {"upload_i32_into_float",
       [](Backend& b, ContractTensors& t) {
         const std::vector<std::int32_t> ids(4, 0);
         b.upload_i32(t.s4, ids.data());
       },
       "upload_i32: dst is {act} (expected i32)"},
      {"upload_into_i32",
       [](Backend& b, ContractTensors& t) {
         const std::vector<float> host(2, 0.0f);
         b.upload(t.i2, host.data());
       },
       "upload: dst is i32 (expected f32, f64 or bf16)"},
      {"copy_wrong_count", [](Backend& b, ContractTensors& t) { b.copy(t.s6, t.s4); },
       "copy: src has 4 elements (expected 6)"},
      {"copy_converting_in_place",
       [](Backend& b, ContractTensors& t) {
         // The same memory seen as another float dtype.
         const DType other = b.activation_dtype() == DType::F32 ? DType::BF16 : DType::F32;
         b.copy(Tensor{t.s6.tensor().data, 2, other}, t.s6.tensor().slice(0, 2));
       },
       "copy: dst overlaps src (expected separate tensors)"},
      {"copy_shifted_in_place",  // memmove on a CPU, undefined for cudaMemcpyAsync: refused on both
       [](Backend& b, ContractTensors& t) {
         b.copy(t.s6.tensor().slice(1, 4), t.s6.tensor().slice(0, 4));
       },
       "copy: dst overlaps src (expected separate tensors)"},
      {"scale_unallocated",
       [](Backend& b, ContractTensors&) {
         b.scale_inplace(Tensor{nullptr, 10, b.activation_dtype()}, 2.0);
       },
       "scale_inplace: t is unallocated (expected a tensor of 10 elements)"},
      {"sum_of_squares_unallocated",
       [](Backend& b, ContractTensors&) {
         b.sum_of_squares(Tensor{nullptr, 3, DType::F32});
       },
       "sum_of_squares: t is unallocated (expected a tensor of 3 elements)"},
      {"download_unallocated",
       [](Backend& b, ContractTensors&) {
         std::vector<float> host(5);
         b.download(host.data(), Tensor{nullptr, 5, DType::F32});
       },
       "download: src is unallocated (expected a tensor of 5 elements)"},
      {"matmul_wrong_dtype",
       [](Backend& b, ContractTensors& t) { b.matmul(t.s4, t.s6, t.i2, 2, 2, 3, false, false); },
       "matmul: b is i32 (expected {act})"},
      {"matmul_wrong_count",
       [](Backend& b, ContractTensors& t) { b.matmul(t.s4, t.s6, t.s9, 2, 2, 3, false, false); },
       "matmul: b has 9 elements (expected 6)"},
      {"matmul_negative_size",
       [](Backend& b, ContractTensors& t) { b.matmul(t.s4, t.s6, t.s6b, -2, 2, 3, false, false); },
       "matmul: M = -2 (expected a size >= 0)"},
      {"matmul_out_overlaps_a",
       [](Backend& b, ContractTensors& t) {
         b.matmul(t.s6.tensor().slice(2, 4), t.s6, t.s6b, 2, 2, 3, false, false);
       },
       "matmul: out overlaps a (expected separate tensors)"},
      {"matmul_unallocated",
       [](Backend& b, ContractTensors& t) {
         b.matmul(t.s4, Tensor{nullptr, 6, b.activation_dtype()}, t.s6b, 2, 2, 3, false, false);
       },
       "matmul: a is unallocated (expected a tensor of 6 elements)"},
      {"add_inplace_wrong_count", [](Backend& b, ContractTensors& t) { b.add_inplace(t.s6, t.s4); },
       "add_inplace: src has 4 elements (expected 6)"},
      {"scale_inplace_i32", [](Backend& b, ContractTensors& t) { b.scale_inplace(t.i2, 2.0); },
       "scale_inplace: t is i32 (expected {fp_or_act})"},
      {"embedding_tokens_f32",
       [](Backend& b, ContractTensors& t) { b.embedding_forward(t.s6, t.f2, t.s9, 2, 3); },
       "embedding_forward: tokens is f32 (expected i32)"},
      {"embedding_table_not_rows_of_D",
       [](Backend& b, ContractTensors& t) { b.embedding_forward(t.s4, t.i2, t.s6, 2, 4); },
       "embedding_forward: table has 6 elements (expected a multiple of D = 4)"},
      {"rmsnorm_rstd_wrong_count",
       [](Backend& b, ContractTensors& t) {
         b.rmsnorm_forward(t.s6, t.f6, t.s6b, t.s6b.tensor().slice(0, 3), 2, 3, 1e-5f);
       },
       "rmsnorm_forward: rstd has 6 elements (expected 2)"},
      {"residual_rmsnorm_out_overlaps_residual",
       [](Backend& b, ContractTensors& t) {
         b.residual_rmsnorm_forward(t.s6b, t.s6, t.f2, t.s6, t.s6b, t.s9.tensor().slice(0, 3), 2, 3,
                                    1e-5f);
       },
       "residual_rmsnorm_forward: out overlaps residual (expected separate tensors)"},
      {"rope_odd_head_dim",
       [](Backend& b, ContractTensors& t) { b.rope_forward(t.s6, t.f2, 1, 2, 1, 3, 0); },
       "rope_forward: head_dim = 3 (expected an even head_dim: rotate-half pairs channel i with "
       "i + head_dim / 2)"},
      {"attention_heads_not_grouped",
       [](Backend& b, ContractTensors& t) {
         b.attention_forward(t.s6, t.f2, t.s6, t.s4, t.s4, 1, 1, 1, 3, 2, 2);
       },
       "attention_forward: Hq = 3 query heads over Hkv = 2 KV heads (expected Hq a multiple of "
       "Hkv)"},
      {"attention_fewer_keys_than_queries",
       [](Backend& b, ContractTensors& t) {
         b.attention_forward(t.s4, t.f2, t.s4, t.s4, t.s4, 1, 2, 1, 1, 1, 2);
       },
       "attention_forward: Tk = 1 keys for Tq = 2 queries (expected Tk >= Tq)"},
      {"rope_positions_with_offset",
       [](Backend& b, ContractTensors& t) {
         b.rope_forward(t.s4, t.f2.tensor().slice(0, 1), 1, 2, 1, 2, 3, t.i2);
       },
       "rope_forward: position_offset = 3 with positions (expected position_offset 0: positions "
       "give every token's position)"},
      {"attention_positions_wrong_count",
       [](Backend& b, ContractTensors& t) {
         b.attention_forward(t.s4, t.f2, t.s4, t.s6.tensor().slice(0, 4),
                             t.s6b.tensor().slice(0, 4), 1, 2, 2, 1, 1, 2,
                             t.i2.tensor().slice(0, 1));
       },
       "attention_forward: positions has 1 elements (expected 2)"},
      {"attention_positions_with_kv_cache",
       [](Backend& b, ContractTensors& t) {
         b.attention_forward(t.s6.tensor().slice(0, 2), t.f2.tensor().slice(0, 1),
                             t.s6b.tensor().slice(0, 2), t.s4, t.s9.tensor().slice(0, 4), 1, 1, 2,
                             1, 1, 2, t.i2.tensor().slice(0, 1));
       },
       "attention_forward: positions with Tq = 1 queries over Tk = 2 keys (expected Tq == Tk: "
       "packed documents have no KV cache)"},
      {"attention_rope_with_kv_cache",
       [](Backend& b, ContractTensors& t) {
         b.attention_forward(t.s6.tensor().slice(0, 2), t.f2.tensor().slice(0, 1),
                             t.s6b.tensor().slice(0, 2), t.s4, t.s9.tensor().slice(0, 4), 1, 1, 2,
                             1, 1, 2, {}, {}, t.f2.tensor().slice(0, 1));
       },
       "attention_forward: RoPE with Tq = 1 queries over Tk = 2 keys (expected Tq == Tk: cached "
       "keys are rotated when they are cached)"},
      {"attention_rope_frequencies_wrong_count",
       [](Backend& b, ContractTensors& t) {
         b.attention_backward(t.s4, t.s4, t.s4, t.s4, t.s4, t.f2, t.s4, t.s4, t.s4, 1, 2, 1, 1, 2,
                              {}, {}, t.f2);
       },
       "attention_backward: rope_inv_freq has 2 elements (expected 1)"},
      {"swiglu_negative_n",
       [](Backend& b, ContractTensors& t) { b.swiglu_forward(t.s6, t.s6b, t.s9, -1); },
       "swiglu_forward: n = -1 (expected a size >= 0)"},
      {"cross_entropy_empty_vocab",
       [](Backend& b, ContractTensors& t) { b.cross_entropy(t.f2, t.s4, t.i2, 2, 0, 1.0f); },
       "cross_entropy: V = 0 (expected a size >= 1)"},
      {"kl_divergence_zero_temperature",
       [](Backend& b, ContractTensors& t) { b.kl_divergence(t.f2, t.s6, t.s6b, 2, 3, 0.0f, 1.0f); },
       "kl_divergence: temperature = 0 (expected a temperature > 0)"},
      {"adamw_moment_wrong_count",
       [](Backend& b, ContractTensors& t) {
         AdamWStep step;
         b.adamw_update(t.s6, Tensor{}, t.s6b, t.f2, t.f6, step);
       },
       "adamw_update: m has 2 elements (expected 6)"},
      {"row_cosine_out_wrong_count",
       [](Backend& b, ContractTensors& t) { b.row_cosine(t.f6, t.s6, t.s6b, 2, 3); },
       "row_cosine: out has 6 elements (expected 2)"},
  };
}

std::string expected_message(const Backend& backend, std::string message) {
  const std::string act = dtype_name(backend.activation_dtype());
  const std::string fp_or_act = backend.activation_dtype() == DType::BF16  ? "f32 or bf16"
                                : backend.activation_dtype() == DType::F64 ? "f32 or f64"
                                                                           : "f32";
  for (const auto& [key, value] :
       {std::pair<std::string, std::string>{"{act}", act}, {"{fp_or_act}", fp_or_act}})
    for (std::size_t at = message.find(key); at != std::string::npos; at = message.find(key))
      message.replace(at, key.size(), value);
  return message;
}

class BackendContract : public ::testing::TestWithParam<std::string> {};

TEST_P(BackendContract, AWrongCallFailsWithTheSameMessageOnEveryEngine) {
  // make_cuda_backend rather than make_backend("cuda"): the sanitizer builds have no nvcc
  // engine for make_backend to reach, and the emulated engine is what this test runs.
  const std::unique_ptr<Backend> backend =
      GetParam() == "cuda-emulated" ? make_cuda_backend() : make_backend(GetParam());
  ContractTensors tensors(*backend);
  for (const WrongCall& wrong : wrong_calls()) {
    SCOPED_TRACE(wrong.name);
    EXPECT_EQ(testing::error_of([&] { wrong.call(*backend, tensors); }),
              expected_message(*backend, wrong.message));
  }
}

INSTANTIATE_TEST_SUITE_P(Engines, BackendContract,
                         ::testing::Values("cpu", "cpu-f64", "cuda-emulated"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

}  // namespace
}  // namespace minitron::test
