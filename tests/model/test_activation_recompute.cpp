// Activation recomputation on the CPU engines: gradients bit-identical to keeping every
// activation (tests/model/recompute_test_util.h; the emulated CUDA engine runs the same check in
// tests/kernels/cuda/test_cuda_training_step.cpp), the arena sizes each mode allocates, and the
// mode names the flags take.
#include <gtest/gtest.h>

#include <algorithm>

#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/model/recompute_test_util.h"
#include "util/error.h"

namespace minitron::test {
namespace {

ModelConfig small_config(std::int64_t hidden) {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = hidden;
  c.intermediate_size = 52;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;  // q_dim 24 != hidden
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 64;
  return c;
}

TEST(ActivationRecompute, GradientsBitIdenticalOnCpu) {
  auto backend = make_backend("cpu");
  expect_recompute_bit_identical(*backend, small_config(36));
}

TEST(ActivationRecompute, GradientsBitIdenticalOnCpuF64) {
  auto backend = make_backend("cpu-f64");
  expect_recompute_bit_identical(*backend, small_config(36));
}

// Per token: the residual stream keeps L + 1 rows of D; a layer writes 3 D + 2 QD + 2 KVD + 3 F
// activations and 2 + Hq statistics (two norms' 1/rms, attention's log-sum-exp per head), of
// which Selective recomputes two norm outputs (2 D), their statistics (2) and SwiGLU's product (F).
TEST(ActivationRecompute, ArenaBytesFollowTheFormula) {
  const ModelConfig c = small_config(36);
  const std::int64_t B = 3, T = 5, N = B * T, L = c.num_hidden_layers, D = c.hidden_size, F = c.intermediate_size;
  const std::int64_t QD = c.q_dim(), KVD = c.kv_dim(), Hq = c.num_attention_heads;
  for (const char* engine : {"cpu", "cpu-f64"}) {
    SCOPED_TRACE(engine);
    auto backend = make_backend(engine);
    const std::int64_t a = static_cast<std::int64_t>(dtype_size(backend->activation_dtype())),
                       s = a;  // stats match on CPU
    const std::int64_t layer = N * ((3 * D + 2 * QD + 2 * KVD + 3 * F) * a + (2 + Hq) * s);
    const std::int64_t recomputed = N * ((2 * D + F) * a + 2 * s);
    const std::int64_t stream = (L + 1) * N * D * a;
    auto bytes = [&](ModelMode mode, ActivationRecompute r) {
      return LlamaModel(c, *backend, B, T, mode, r).activation_arena_bytes();
    };
    const ActivationArenaBytes none = bytes(ModelMode::Training, ActivationRecompute::None);
    EXPECT_EQ(none.saved, stream + L * layer);
    EXPECT_EQ(none.workspace, 0);
    const ActivationArenaBytes selective = bytes(ModelMode::Training, ActivationRecompute::Selective);
    EXPECT_EQ(selective.saved, stream + L * (layer - recomputed));
    EXPECT_EQ(selective.workspace, recomputed);
    const ActivationArenaBytes full = bytes(ModelMode::Training, ActivationRecompute::Full);
    EXPECT_EQ(full.saved, stream);
    EXPECT_EQ(full.workspace, layer);
    const ActivationArenaBytes inference = bytes(ModelMode::Inference, ActivationRecompute::None);
    EXPECT_EQ(inference.saved, 2 * N * D * a);  // two residual buffers, ping-pong
    // Inference: the attention half (D, the fused q|k|v of QD + 2 KVD, QD) and then the MLP half
    // (the fused gate|up of 2 F, then max(D, F): the norm's output, SwiGLU's product over it) in one
    // region, each view on a 256-byte boundary; 1 + Hq statistics.
    auto aligned = [](std::int64_t bytes) { return (bytes + 255) / 256 * 256; };
    const std::int64_t attention_half = aligned(N * D * a) + aligned(N * (QD + 2 * KVD) * a) + N * QD * a;
    const std::int64_t mlp_half = aligned(N * 2 * F * a) + N * std::max(D, F) * a;
    EXPECT_EQ(inference.workspace, std::max(attention_half, mlp_half) + aligned(N * s) + N * Hq * s);
    EXPECT_LT(inference.workspace, layer);
  }
}

TEST(ActivationRecompute, NamesRoundTripAndInferenceRefusesRecomputation) {
  for (ActivationRecompute r : {ActivationRecompute::None, ActivationRecompute::Selective, ActivationRecompute::Full})
    EXPECT_EQ(parse_activation_recompute(activation_recompute_name(r)), r);
  EXPECT_FALSE(parse_activation_recompute("Full").has_value());
  EXPECT_FALSE(parse_activation_recompute("").has_value());
  auto backend = make_backend("cpu");
  EXPECT_THROW(LlamaModel(small_config(36), *backend, 1, 4, ModelMode::Inference, ActivationRecompute::Full), Error);
}

}  // namespace
}  // namespace minitron::test
