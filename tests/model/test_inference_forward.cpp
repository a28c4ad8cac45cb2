// The Inference-mode forward, whose layer halves share one region (model/llama.cpp), gives the
// Training-mode forward's activations, final hidden state and logits bit for bit on the CPU
// engines (tests/model/inference_test_util.h; the emulated CUDA engine runs the same check in
// tests/kernels/cuda/test_cuda_training_step.cpp).
#include <gtest/gtest.h>

#include "kernels/make_backend.h"
#include "tests/model/inference_test_util.h"

namespace minitron::test {
namespace {

// q_dim 24 != hidden 36 != intermediate 52, so each view of the region has its own size, and
// none of the fp32 or fp64 sizes is a multiple of 256 bytes (every view after the first starts
// on a rounded offset).
ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 36;
  c.intermediate_size = 52;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 64;
  return c;
}

TEST(InferenceForward, MatchesTrainingForwardOnCpu) {
  auto backend = make_backend("cpu");
  expect_inference_matches_training(*backend, small_config());
}

TEST(InferenceForward, MatchesTrainingForwardOnCpuF64) {
  auto backend = make_backend("cpu-f64");
  expect_inference_matches_training(*backend, small_config());
}

// An MLP half larger than the attention half (the usual shape) and the reverse: the region is
// the larger of the two either way.
TEST(InferenceForward, MatchesTrainingForwardWhicheverHalfIsLarger) {
  auto backend = make_backend("cpu");
  ModelConfig wide_attention = small_config();
  wide_attention.intermediate_size = 8;
  expect_inference_matches_training(*backend, wide_attention);
}

}  // namespace
}  // namespace minitron::test
