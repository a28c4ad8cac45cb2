// Whole-model gradient check: the model's backward (every op, residuals, tied or untied head,
// GQA, llama3-scaled RoPE, head_dim != hidden / heads) against central finite differences of
// the loss, all in double precision on the "cpu-f64" engine.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/make_backend.h"
#include "model/llama.h"
#include "train/losses.h"

namespace minitron {
namespace {

ModelConfig tiny_config(bool tied) {
  ModelConfig c;
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 6;  // q_dim 24 != hidden 8, as in Mistral NeMo
  c.rope_theta = 10000.0;
  c.rope_scaling.type = RopeScaling::Type::Llama3;
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 8;  // small, so every band is exercised
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.max_position_embeddings = 64;
  return c;
}

class LlamaGradientCheck : public ::testing::TestWithParam<bool> {};

TEST_P(LlamaGradientCheck, MatchesCentralDifferences) {
  const ModelConfig config = tiny_config(GetParam());
  auto backend = make_backend("cpu-f64");
  const std::int64_t B = 2, T = 4;
  LlamaModel model(config, *backend, B, T, ModelMode::Training);
  std::vector<float> init(static_cast<std::size_t>(model.table().total_numel()));
  // A large init std so that attention is far from uniform and every path carries gradient.
  initialize_parameters(config, model.table(), init, /*seed=*/7, /*std=*/0.5);
  for (const ParamInfo& info : model.table().entries())  // norms away from exactly 1
    if (info.kind == ParamKind::Norm)
      for (std::int64_t i = 0; i < info.numel; ++i)
        init[static_cast<std::size_t>(info.offset + i)] += 0.1f * static_cast<float>(i % 3);
  model.set_parameters(init);

  const std::vector<std::int32_t> inputs{1, 5, 9, 2, 7, 7, 0, 10};
  const std::vector<std::int32_t> targets{5, 9, 2, 3, 7, 0, -1, 4};                   // one ignored target
  LossWorkspace workspace(*backend, config.vocab_size, B * T, /*rows_per_chunk=*/3);  // several chunks

  auto loss = [&] {
    model.forward(inputs, B, T);
    return cross_entropy_loss(model, targets, workspace);
  };
  model.zero_gradients();
  model.forward(inputs, B, T);
  cross_entropy_loss(model, targets, workspace, 1.0f);
  model.backward();
  const auto n = static_cast<std::size_t>(model.table().total_numel());
  std::vector<double> grads(n);
  const double* g = model.gradients().as<double>();
  grads.assign(g, g + n);

  double* params = model.parameters().as<double>();
  for (const ParamInfo& info : model.table().entries()) {
    for (std::int64_t i = 0; i < info.numel; ++i) {
      double& w = params[info.offset + i];
      const double saved = w;
      // Step 1e-5: truncation error ~h^2 * |f'''| ~ 1e-10, rounding ~1e-16 / h ~ 1e-11.
      const double h = 1e-5;
      w = saved + h;
      double up = loss();
      w = saved - h;
      double down = loss();
      w = saved;
      double numeric = (up - down) / (2 * h);
      double analytic = grads[static_cast<std::size_t>(info.offset + i)];
      // Tolerance: a few times the finite-difference error above, relative to the gradient.
      EXPECT_NEAR(analytic, numeric, 1e-8 + 1e-6 * std::abs(numeric)) << info.name << "[" << i << "]";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(TiedAndUntied, LlamaGradientCheck, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "tied" : "untied"; });

TEST(LlamaModel, SkippedLayersAreIdentity) {
  ModelConfig config = tiny_config(false);
  auto backend = make_backend("cpu");
  LlamaModel model(config, *backend, 1, 3, ModelMode::Inference);
  std::vector<float> init(static_cast<std::size_t>(model.table().total_numel()));
  initialize_parameters(config, model.table(), init, 3, 0.3);
  // Zero both layers' output projections: each layer then adds nothing to the residual.
  for (std::int64_t l = 0; l < config.num_hidden_layers; ++l) {
    const LayerOffsets& w = model.table().layer(l);
    std::fill_n(init.begin() + w.o_proj, config.hidden_size * config.q_dim(), 0.0f);
    std::fill_n(init.begin() + w.down_proj, config.hidden_size * config.intermediate_size, 0.0f);
  }
  model.set_parameters(init);
  const std::vector<std::int32_t> tokens{3, 1, 4};
  const std::int64_t V = config.vocab_size;
  auto logits = [&](const std::vector<bool>* skip) {
    ForwardOptions options;
    options.skip_layers = skip;
    model.forward(tokens, 1, 3, options);
    BackendBuffer out(*backend, 3 * V, DType::F32);
    model.logits(out, 0, 3);
    std::vector<float> host(static_cast<std::size_t>(3 * V));
    backend->download(host.data(), out);
    return host;
  };
  std::vector<bool> skip_all(static_cast<std::size_t>(config.num_hidden_layers), true);
  EXPECT_EQ(logits(nullptr), logits(&skip_all));  // exact: zero contributions add nothing
}

TEST(LlamaModel, KvCacheDecodingMatchesFullForward) {
  ModelConfig config = tiny_config(false);
  auto backend = make_backend("cpu");
  const std::int64_t T = 6, V = config.vocab_size;
  LlamaModel model(config, *backend, 1, T, ModelMode::Inference);
  std::vector<float> init(static_cast<std::size_t>(model.table().total_numel()));
  initialize_parameters(config, model.table(), init, 5, 0.4);
  model.set_parameters(init);
  const std::vector<std::int32_t> tokens{3, 1, 4, 1, 5, 9};
  BackendBuffer out(*backend, T * V, DType::F32);
  model.forward(tokens, 1, T);
  model.logits(out, 0, T);
  std::vector<float> full(static_cast<std::size_t>(T * V));
  backend->download(full.data(), out);

  // A prompt of 2 tokens, then one token at a time, as generation does.
  KvCache cache(config, *backend, T);
  std::vector<float> step(static_cast<std::size_t>(2 * V));
  for (std::int64_t start = 0; start < T;) {
    std::int64_t n = start == 0 ? 2 : 1;
    ForwardOptions options;
    options.cache = &cache;
    model.forward(std::span(tokens).subspan(static_cast<std::size_t>(start), static_cast<std::size_t>(n)), 1, n,
                  options);
    model.logits(out, 0, n);
    backend->download(step.data(), out.tensor().slice(0, n * V));
    for (std::int64_t i = 0; i < n * V; ++i)
      // Same arithmetic in another grouping (attention over a prefix): fp32 rounding only.
      EXPECT_NEAR(step[static_cast<std::size_t>(i)], full[static_cast<std::size_t>(start * V + i)], 1e-5)
          << "position " << start + i / V;
    start += n;
  }
  EXPECT_EQ(cache.length(), T);
  std::vector<std::int32_t> one{2};
  ForwardOptions options;
  options.cache = &cache;
  EXPECT_THROW(model.forward(one, 1, 1, options), Error);  // the cache is full
}

TEST(LlamaModel, RejectsOversizedBatchAndBadTokens) {
  ModelConfig config = tiny_config(true);
  auto backend = make_backend("cpu");
  LlamaModel model(config, *backend, 1, 2, ModelMode::Inference);
  std::vector<std::int32_t> three{1, 2, 3};
  EXPECT_THROW(model.forward(three, 1, 3), Error);
  std::vector<std::int32_t> bad{1, 11};
  EXPECT_THROW(model.forward(bad, 1, 2), Error);
}

}  // namespace
}  // namespace minitron
