// Packed documents through the whole model (ForwardOptions::positions), on one engine: a batch
// whose rows each hold several documents must give the logits and the parameter gradients that
// the documents give run alone, one sequence each; the same batch without positions must not
// (its documents see each other), which shows the comparison would catch cross-talk.
//
// The gradient is that of the linear loss sum(R * logits) for a fixed random R, so the packed
// batch's gradient is exactly the sum of the documents' (no per-call mean to reweigh).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "model/llama.h"
#include "util/random.h"

namespace minitron::test {

inline ModelConfig packed_test_config() {
  ModelConfig c;
  c.vocab_size = 53;
  c.hidden_size = 24;
  c.intermediate_size = 40;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;  // the smallest the CUDA attention kernels take; q_dim 64 != hidden
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 64;
  return c;
}

// Two rows of 12 tokens: a 1-token document inside the first, two documents in the second.
inline const std::vector<std::vector<std::int64_t>> kDocuments = {{5, 1, 6}, {7, 5}};
inline constexpr std::int64_t kBatch = 2, kSequence = 12;

inline std::vector<std::int32_t> positions_of(const std::vector<std::vector<std::int64_t>>& documents) {
  std::vector<std::int32_t> positions;
  for (const auto& row : documents)
    for (std::int64_t length : row)
      for (std::int64_t i = 0; i < length; ++i) positions.push_back(static_cast<std::int32_t>(i));
  return positions;
}

struct Outputs {
  std::vector<double> logits;     // [N, V], the packed batch's row order
  std::vector<double> gradients;  // every parameter's, accumulated
};

class PackedModel {
 public:
  explicit PackedModel(Backend& backend) : backend_(backend), config_(packed_test_config()) {
    const std::int64_t N = kBatch * kSequence, V = config_.vocab_size;
    SplitMix64 rng(5);
    for (std::int64_t i = 0; i < N; ++i)
      tokens_.push_back(static_cast<std::int32_t>(rng.next() % static_cast<std::uint64_t>(V)));
    for (std::int64_t i = 0; i < N * V; ++i) weights_.push_back(static_cast<float>(rng.uniform() - 0.5));
  }

  // The batch in one forward and backward, with `positions` (empty: one causal sequence per row).
  Outputs packed(const std::vector<std::int32_t>& positions) {
    const auto made = make_model();
    LlamaModel& model = *made;
    ForwardOptions options;
    options.positions = positions;
    model.forward(tokens_, kBatch, kSequence, options);
    Outputs out;
    out.logits = head(model, 0, kBatch * kSequence);
    model.backward();
    out.gradients = gradients(model);
    return out;
  }

  // Each document alone (a batch of one sequence of its length, no positions), the gradients
  // accumulated over all of them in one model.
  Outputs alone() {
    const auto made = make_model();
    LlamaModel& model = *made;
    const std::int64_t V = config_.vocab_size;
    Outputs out;
    out.logits.resize(static_cast<std::size_t>(kBatch * kSequence * V));
    for (std::int64_t row = 0; row < kBatch; ++row) {
      std::int64_t start = row * kSequence;
      for (std::int64_t L : kDocuments[static_cast<std::size_t>(row)]) {
        const std::span<const std::int32_t> document(tokens_.data() + start, static_cast<std::size_t>(L));
        model.forward(document, 1, L);
        const std::vector<double> logits = head(model, start, L);
        std::copy(logits.begin(), logits.end(), out.logits.begin() + start * V);
        model.backward();
        start += L;
      }
    }
    out.gradients = gradients(model);
    return out;
  }

 private:
  std::unique_ptr<LlamaModel> make_model() {
    auto made = std::make_unique<LlamaModel>(config_, backend_, kBatch, kSequence, ModelMode::Training);
    LlamaModel& model = *made;
    std::vector<float> init(static_cast<std::size_t>(model.table().total_numel()));
    initialize_parameters(config_, model.table(), init, /*seed=*/3, /*std=*/0.3);  // far from uniform attention
    model.set_parameters(init);
    model.zero_gradients();
    return made;
  }

  // The logits of the forward's `rows` rows (packed-batch rows first_row ..), and the head
  // backward of sum(R * logits) over them.
  std::vector<double> head(LlamaModel& model, std::int64_t first_row, std::int64_t rows) {
    const std::int64_t V = config_.vocab_size;
    BackendBuffer logits(backend_, rows * V, backend_.activation_dtype());
    model.logits(logits, 0, rows);
    std::vector<double> host(static_cast<std::size_t>(rows * V));
    backend_.download_f64(host.data(), logits);
    backend_.upload(logits, weights_.data() + first_row * V);
    model.head_backward(logits, 0, rows);
    return host;
  }

  std::vector<double> gradients(const LlamaModel& model) {
    std::vector<double> host(static_cast<std::size_t>(model.table().total_numel()));
    backend_.download_f64(host.data(), model.gradients());
    return host;
  }

  Backend& backend_;
  ModelConfig config_;
  std::vector<std::int32_t> tokens_;
  std::vector<float> weights_;  // R
};

inline double max_difference(const std::vector<double>& a, const std::vector<double>& b) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}
inline double max_magnitude(const std::vector<double>& a) {
  double worst = 0;
  for (double x : a) worst = std::max(worst, std::abs(x));
  return worst;
}

// Differences within `logits` and `gradients` of the largest magnitude (relative), and the
// unpacked batch's more than twice that.
inline void expect_packed_model_matches_documents_alone(Backend& backend, double logits, double gradients) {
  PackedModel harness(backend);
  const Outputs packed = harness.packed(positions_of(kDocuments));
  const Outputs alone = harness.alone();
  const double logit_bound = logits * max_magnitude(alone.logits);
  const double gradient_bound = gradients * max_magnitude(alone.gradients);
  EXPECT_LE(max_difference(packed.logits, alone.logits), logit_bound);
  EXPECT_LE(max_difference(packed.gradients, alone.gradients), gradient_bound);
  const Outputs causal = harness.packed({});
  EXPECT_GT(max_difference(causal.logits, alone.logits), 2 * logit_bound);
  EXPECT_GT(max_difference(causal.gradients, alone.gradients), 2 * gradient_bound);
}

}  // namespace minitron::test
