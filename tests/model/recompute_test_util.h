// Activation recomputation (model/llama.h's ActivationRecompute) against keeping every
// activation, on one engine: two micro-batches of forward, chunked cross-entropy and backward
// must give bit-identical losses and gradients in every mode. Before each backward the
// recomputed workspace is filled with NaN, so the gradients come out right only if backward
// rebuilt every value it reads there: a skipped or partial recomputation fails the comparison.
// With `packed`, each micro-batch's rows hold several documents (ForwardOptions::positions), so
// the recomputed attention and RoPE must use the forward's positions too.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "model/llama.h"
#include "train/losses.h"

namespace minitron::test {

struct RecomputeRun {
  std::vector<double> losses;     // per micro-batch
  std::vector<double> gradients;  // accumulated over both micro-batches, widened exactly to double
  ActivationArenaBytes bytes;
};

// Positions of rows cut into documents of 4 tokens and 1 token in turn (the last one cut short
// by the row's end): 0 1 2 3 0 0 1 2 3 0 ...
inline std::vector<std::int32_t> packed_test_positions(std::int64_t batch, std::int64_t sequence) {
  std::vector<std::int32_t> positions;
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = 0; t < sequence; ++t) positions.push_back(static_cast<std::int32_t>(t % 5 == 4 ? 0 : t % 5));
  return positions;
}

inline RecomputeRun run_recompute_steps(Backend& backend, const ModelConfig& config, ActivationRecompute recompute,
                                        bool packed = false) {
  const std::int64_t B = 2, T = 9;
  LlamaModel model(config, backend, B, T, ModelMode::Training, recompute);
  std::vector<float> init(static_cast<std::size_t>(model.table().total_numel()));
  initialize_parameters(config, model.table(), init, /*seed=*/11, /*std=*/0.2);  // attention far from uniform
  model.set_parameters(init);
  LossWorkspace workspace(backend, config.vocab_size, B * T, /*rows_per_chunk=*/5);
  RecomputeRun run;
  model.zero_gradients();
  // The second micro-batch is smaller than the arenas, so every view is a proper slice.
  for (const auto& [batch, sequence] : {std::pair<std::int64_t, std::int64_t>{B, T}, {1, 7}}) {
    const std::int64_t N = batch * sequence;
    std::vector<std::int32_t> inputs(static_cast<std::size_t>(N)), targets(inputs.size());
    for (std::int64_t i = 0; i < N; ++i) {
      inputs[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 37 + 5 + batch) % config.vocab_size);
      targets[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 53 + 2) % config.vocab_size);
    }
    const std::vector<std::int32_t> positions =
        packed ? packed_test_positions(batch, sequence) : std::vector<std::int32_t>{};
    ForwardOptions options;
    options.positions = positions;
    model.forward(inputs, batch, sequence, options);
    run.losses.push_back(cross_entropy_loss(model, targets, workspace, 0.5f));
    for (Tensor t : model.recomputed_activations()) {
      const std::vector<float> poison(static_cast<std::size_t>(t.numel), std::numeric_limits<float>::quiet_NaN());
      backend.upload(t, poison.data());
    }
    model.backward();
  }
  run.gradients.resize(static_cast<std::size_t>(model.table().total_numel()));
  backend.download_f64(run.gradients.data(), model.gradients());
  run.bytes = model.activation_arena_bytes();
  return run;
}

inline void expect_recompute_bit_identical(Backend& backend, const ModelConfig& config, bool packed = false) {
  const RecomputeRun kept = run_recompute_steps(backend, config, ActivationRecompute::None, packed);
  for (ActivationRecompute mode : {ActivationRecompute::Selective, ActivationRecompute::Full}) {
    SCOPED_TRACE(activation_recompute_name(mode));
    const RecomputeRun run = run_recompute_steps(backend, config, mode, packed);
    ASSERT_EQ(run.losses.size(), kept.losses.size());
    for (std::size_t i = 0; i < kept.losses.size(); ++i)
      EXPECT_EQ(run.losses[i], kept.losses[i]) << "micro-batch " << i;
    ASSERT_EQ(run.gradients.size(), kept.gradients.size());
    std::size_t differing = 0, first = 0;
    for (std::size_t i = 0; i < kept.gradients.size(); ++i)
      if (std::memcmp(&run.gradients[i], &kept.gradients[i], sizeof(double)) != 0 && differing++ == 0) first = i;
    EXPECT_EQ(differing, 0u) << "first at parameter " << first << ": " << run.gradients[first] << " vs "
                             << kept.gradients[first];
    EXPECT_LT(run.bytes.saved, kept.bytes.saved);
    EXPECT_GT(run.bytes.workspace, 0);
  }
}

}  // namespace minitron::test
