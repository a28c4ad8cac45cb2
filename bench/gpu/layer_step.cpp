// GPU-only: one training step (forward, chunked cross-entropy, backward, AdamW) of a model with
// Llama-3.1-8B-shaped layers through the shared model code (model/llama.cpp) on the CUDA engine.
// Prints tokens/s and MFU as one JSON line (bench/gpu/torch_layer.py measures PyTorch on the
// same shape; bench/gpu_check.sh prints the ratios).
//
// Usage: layer_step [layers=2] [sequence=4096] [vocab=32000] [peak_tflops=989] [recompute=none]
// The vocabulary is Llama-2's 32000 by default so that the head does not drown the layers.
// recompute (none, selective, full) is train's --recompute: its row is named after it, so the
// summary's ratio column gives each mode's cost against none.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend_factory.h"
#include "model/llama.h"
#include "train/losses.h"
#include "train/optimizer.h"

namespace minitron {
namespace {

int run(int argc, char** argv) {
  auto arg = [&](int i, double fallback) { return argc > i ? std::atof(argv[i]) : fallback; };
  ModelConfig c;
  c.num_hidden_layers = static_cast<std::int64_t>(arg(1, 2));
  const std::int64_t T = static_cast<std::int64_t>(arg(2, 4096)), B = 1;
  c.vocab_size = static_cast<std::int64_t>(arg(3, 32000));
  const double peak_tflops = arg(4, 989.0);  // H200 SXM dense bf16
  const std::string recompute_name = argc > 5 ? argv[5] : "none";
  const std::optional<ActivationRecompute> recompute = parse_activation_recompute(recompute_name);
  if (!recompute) throw std::runtime_error("recompute '" + recompute_name + "' (expected none, selective or full)");
  c.hidden_size = 4096;
  c.intermediate_size = 14336;
  c.num_attention_heads = 32;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = T;

  auto backend = make_cuda_backend();
  LlamaModel model(c, *backend, B, T, ModelMode::Training, *recompute);
  // Any finite weights do for timing; a cheap generator instead of the seeded normal init.
  std::vector<float> init(static_cast<std::size_t>(model.table().total_numel()));
  std::uint64_t state = 42;
  for (float& w : init) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    w = (static_cast<float>(state >> 40) / 16777216.0f - 0.5f) * 0.04f;
  }
  model.set_parameters(init);
  init.clear();
  init.shrink_to_fit();

  std::vector<std::int32_t> tokens(static_cast<std::size_t>(B * T)), targets(tokens.size());
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<std::int32_t>((i * 7919) % static_cast<std::size_t>(c.vocab_size));
    targets[i] = static_cast<std::int32_t>((i * 104729 + 1) % static_cast<std::size_t>(c.vocab_size));
  }
  LossWorkspace workspace(*backend, c.vocab_size, B * T);
  OptimizerConfig oc;
  oc.warmup_steps = 0;
  AdamW optimizer(model, oc);

  double loss = 0;
  auto step = [&](std::int64_t s) {
    model.zero_gradients();
    model.forward(tokens, B, T);
    loss = cross_entropy_loss(model, targets, workspace, 1.0f);
    model.backward();
    optimizer.step(s);
  };
  step(0);
  step(1);
  backend->synchronize();
  const int steps = 5;
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) step(2 + s);
  backend->synchronize();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / steps;

  // Model FLOPs per token: 6 per matmul weight (forward 2, backward 4), head included; causal
  // attention's QK^T and PV over T/2 keys on average, also x3 for training.
  const double D = 4096, F = 14336, QD = 32 * 128, KVD = 8 * 128, L = static_cast<double>(c.num_hidden_layers);
  const double matmul_params = L * (D * (QD + 2 * KVD) + QD * D + 3 * D * F) + static_cast<double>(c.vocab_size) * D;
  const double attention = L * 3.0 * 2.0 * 2.0 * (static_cast<double>(T) / 2) * 128 * 32;
  const double flops_per_token = 6.0 * matmul_params + attention;
  const double tokens_per_second = static_cast<double>(B * T) / seconds;
  const double mfu = flops_per_token * tokens_per_second / (peak_tflops * 1e12);
  // JSON has no NaN: a non-finite loss prints as null (the timing row still reaches the
  // summary) and fails the stage, since finite weights must give a finite loss.
  const bool finite = std::isfinite(loss);
  char loss_json[32] = "null";
  if (finite) std::snprintf(loss_json, sizeof loss_json, "%.4f", loss);
  const std::string engine =
      *recompute == ActivationRecompute::None ? "minitron" : "minitron, recompute " + recompute_name;
  const ActivationArenaBytes bytes = model.activation_arena_bytes();
  std::printf(
      "{\"engine\": \"%s\", \"layers\": %lld, \"tokens\": %lld, \"vocab\": %lld, "
      "\"step_ms\": %.2f, \"tokens_per_second\": %.1f, \"mfu\": %.4f, \"loss\": %s, "
      "\"activation_gib\": %.3f}\n",
      engine.c_str(), static_cast<long long>(c.num_hidden_layers), static_cast<long long>(B * T),
      static_cast<long long>(c.vocab_size), seconds * 1e3, tokens_per_second, mfu, loss_json,
      static_cast<double>(bytes.saved + bytes.workspace) / double(1 << 30));
  if (!finite) std::fprintf(stderr, "layer_step: error: the loss is %f, not finite\n", loss);
  return finite ? 0 : 1;
}

}  // namespace
}  // namespace minitron

int main(int argc, char** argv) {
  try {
    return minitron::run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "layer_step: error: %s\n", e.what());
    return 1;
  }
}
