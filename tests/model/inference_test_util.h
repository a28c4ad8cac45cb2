// The Inference-mode forward (model/llama.cpp: one layer's buffers, its attention half and MLP
// half taking one region in turn, the residual after attention written into the layer's output)
// against the Training-mode forward of the same parameters, which keeps a buffer per activation
// and layer: the same ops on the same inputs, so every activation an observer sees, the final
// hidden state and the logits must be the same bits. A view that overlaps another while both
// are live, or a half that reads what the other overwrote, changes them.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "model/llama.h"
#include "tests/model/recompute_test_util.h"
#include "util/error.h"

namespace minitron::test {

// Every site of every layer, copied to the host as it is reported.
class RecordingObserver : public ActivationObserver {
 public:
  explicit RecordingObserver(Backend& backend) : backend_(backend) {}
  bool wants(ActivationSite) const override { return true; }
  void observe(ActivationSite site, std::int64_t layer, Tensor act, std::int64_t, std::int64_t, std::int64_t) override {
    std::vector<double> values(static_cast<std::size_t>(act.numel));
    backend_.download_f64(values.data(), act);
    // A site reported twice in a layer would be a second view of it: keep both.
    sites_[{static_cast<int>(site), layer, count_[{static_cast<int>(site), layer}]++}] = std::move(values);
  }
  const std::map<std::tuple<int, std::int64_t, int>, std::vector<double>>& sites() const { return sites_; }

 private:
  Backend& backend_;
  std::map<std::tuple<int, std::int64_t, int>, std::vector<double>> sites_;
  std::map<std::pair<int, std::int64_t>, int> count_;
};

struct ForwardRecord {
  std::map<std::tuple<int, std::int64_t, int>, std::vector<double>> sites;
  std::vector<double> hidden, logits;
};

inline ForwardRecord record_forward(LlamaModel& model, std::span<const std::int32_t> tokens, std::int64_t batch,
                                    std::int64_t sequence, std::span<const std::int32_t> positions) {
  Backend& b = model.backend();
  RecordingObserver observer(b);
  ForwardOptions options;
  options.observer = &observer;
  options.positions = positions;
  model.forward(tokens, batch, sequence, options);
  ForwardRecord r;
  r.sites = observer.sites();
  const std::int64_t N = batch * sequence, V = model.config().vocab_size;
  r.hidden.resize(static_cast<std::size_t>(N * model.config().hidden_size));
  b.download_f64(r.hidden.data(), model.final_hidden());
  BackendBuffer logits(b, N * V, b.activation_dtype());
  model.logits(logits, 0, N);
  r.logits.resize(static_cast<std::size_t>(N * V));
  b.download_f64(r.logits.data(), logits);
  return r;
}

inline void expect_same_bits(const std::vector<double>& got, const std::vector<double>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(double))) << what;
}

// Two batches (the arenas' size and a smaller one, so the views are proper slices of the
// regions), the second with packed documents.
inline void expect_inference_matches_training(Backend& backend, const ModelConfig& config) {
  const std::int64_t B = 2, T = 9;
  std::vector<float> init(static_cast<std::size_t>(ParameterTable(config).total_numel()));
  initialize_parameters(config, ParameterTable(config), init, /*seed=*/13, /*std=*/0.2);
  LlamaModel training(config, backend, B, T, ModelMode::Training);
  LlamaModel inference(config, backend, B, T, ModelMode::Inference);
  training.set_parameters(init);
  inference.set_parameters(init);
  // A frozen model's storage: the parameters in the engine's storage dtype (bf16 on CUDA, fp32 on
  // the CPU), no gradients.
  EXPECT_EQ(inference.parameters().dtype, backend.activation_dtype());
  EXPECT_TRUE(inference.gradients().empty());
  for (const auto& [batch, sequence, packed] :
       {std::tuple<std::int64_t, std::int64_t, bool>{B, T, false}, {1, 7, true}}) {
    SCOPED_TRACE(str(batch, " x ", sequence, packed ? " packed" : ""));
    const std::int64_t N = batch * sequence;
    std::vector<std::int32_t> tokens(static_cast<std::size_t>(N));
    for (std::int64_t i = 0; i < N; ++i)
      tokens[static_cast<std::size_t>(i)] = static_cast<std::int32_t>((i * 41 + 3) % config.vocab_size);
    const std::vector<std::int32_t> positions =
        packed ? packed_test_positions(batch, sequence) : std::vector<std::int32_t>{};
    const ForwardRecord want = record_forward(training, tokens, batch, sequence, positions);
    const ForwardRecord got = record_forward(inference, tokens, batch, sequence, positions);
    // 7 sites per layer, each reported once.
    ASSERT_EQ(want.sites.size(), static_cast<std::size_t>(7 * config.num_hidden_layers));
    ASSERT_EQ(got.sites.size(), want.sites.size());
    for (const auto& [key, values] : want.sites) {
      const auto it = got.sites.find(key);
      ASSERT_NE(it, got.sites.end());
      expect_same_bits(
          it->second, values,
          str(activation_site_name(static_cast<ActivationSite>(std::get<0>(key))), " of layer ", std::get<1>(key)));
    }
    expect_same_bits(got.hidden, want.hidden, "final hidden state");
    expect_same_bits(got.logits, want.logits, "logits");
  }
}

}  // namespace minitron::test
