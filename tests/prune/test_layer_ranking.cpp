// Depth ranking by removal: the loss with a layer (or block) skipped must equal the loss of the
// same model whose skipped layers add nothing to the residual stream (zero o_proj and
// down_proj), computed by an ordinary forward pass without skip_layers.
#include <gtest/gtest.h>

#include "kernels/make_backend.h"
#include "prune/layer_ranking.h"
#include "prune/slicing.h"
#include "prune_test_util.h"

namespace minitron {
namespace {

using testing::tiny_config;
using testing::tiny_parameters;
using testing::tiny_tokens;

constexpr std::int64_t kWindows = 3, kT = 8;

HeldOutWindows windows_of(const ModelConfig& c) {
  HeldOutWindows w;
  w.count = kWindows;
  w.sequence_length = kT;
  const auto stream = tiny_tokens(kWindows * kT + 1, c.vocab_size, 11);
  for (std::int64_t i = 0; i < kWindows * kT; ++i) {
    w.inputs.push_back(stream[static_cast<std::size_t>(i)]);
    w.targets.push_back(stream[static_cast<std::size_t>(i + 1)]);
  }
  return w;
}

double plain_loss(const ModelConfig& c, const std::vector<float>& params, const HeldOutWindows& w) {
  auto backend = make_backend("cpu");
  LlamaModel model(c, *backend, kWindows, kT, ModelMode::Inference);
  model.set_parameters(params);
  model.forward(w.inputs, kWindows, kT);
  LossWorkspace workspace(*backend, c.vocab_size, kWindows * kT);
  return cross_entropy_loss(model, w.targets, workspace);
}

std::vector<float> without_layers(const ModelConfig& c, std::vector<float> params, std::int64_t first,
                                  std::int64_t last) {
  const ParameterTable t(c);
  for (std::int64_t l = first; l <= last; ++l) {
    std::fill_n(params.data() + t.layer(l).o_proj, c.hidden_size * c.q_dim(), 0.0f);
    std::fill_n(params.data() + t.layer(l).down_proj, c.hidden_size * c.intermediate_size, 0.0f);
  }
  return params;
}

TEST(LayerRanking, RemovalLossesMatchModelsWithSilentLayers) {
  const ModelConfig c = tiny_config();
  const std::vector<float> params = tiny_parameters(c);
  const HeldOutWindows w = windows_of(c);
  auto backend = make_backend("cpu");
  // Batches of 2 windows: the 3 windows take a full and a partial batch.
  LlamaModel model(c, *backend, 2, kT, ModelMode::Inference);
  model.set_parameters(params);
  LossWorkspace workspace(*backend, c.vocab_size, 2 * kT);
  LayerRankingOptions options;
  options.block_sizes = {2, 3};
  const LayerScores s = rank_layers_by_removal(model, w, workspace, options);

  // The silent-layer model differs from skipping only by adding exact zeros (x + 0*...), and by
  // the batch split (per-token losses are independent of it): agreement to fp32 rounding of a
  // mean of 24 losses, 1e-6 relative.
  const double baseline = plain_loss(c, params, w);
  ASSERT_TRUE(s.baseline_loss);
  EXPECT_NEAR(*s.baseline_loss, baseline, 1e-6 * baseline);
  ASSERT_EQ(s.single_removal_loss.size(), 4u);
  for (std::int64_t l = 0; l < 4; ++l) {
    const double want = plain_loss(c, without_layers(c, params, l, l), w);
    EXPECT_NEAR(s.single_removal_loss[static_cast<std::size_t>(l)], want, 1e-6 * want) << "layer " << l;
    EXPECT_NE(s.single_removal_loss[static_cast<std::size_t>(l)], baseline) << "every layer matters in this model";
  }
  for (std::int64_t k : {2, 3}) {
    const auto& losses = s.block_removal_loss.at(k);
    ASSERT_EQ(losses.size(), static_cast<std::size_t>(4 - k + 1));
    for (std::int64_t start = 0; start + k <= 4; ++start) {
      const double want = plain_loss(c, without_layers(c, params, start, start + k - 1), w);
      EXPECT_NEAR(losses[static_cast<std::size_t>(start)], want, 1e-6 * want) << "block " << start << "+" << k;
    }
  }
  EXPECT_EQ(s.block_removal_loss.at(1), s.single_removal_loss);

  // The task hook is called once per removed block with the right layers skipped.
  options.block_sizes = {2};
  std::vector<std::vector<bool>> seen;
  options.task_metric = [&](LlamaModel&, const std::vector<bool>& skip) {
    seen.push_back(skip);
    return static_cast<double>(seen.size());
  };
  const LayerScores with_task = rank_layers_by_removal(model, w, workspace, options);
  EXPECT_EQ(seen.size(), 4u + 3u);
  EXPECT_EQ(seen.back(), (std::vector<bool>{false, false, true, true}));
  EXPECT_EQ(with_task.block_removal_task_score.at(2), (std::vector<double>{5, 6, 7}));

  options.block_sizes = {4};
  EXPECT_THROW(rank_layers_by_removal(model, w, workspace, options), Error);
}

}  // namespace
}  // namespace minitron
