// Shared by the batched-generation tests of the CPU engine (test_generate_batch.cpp) and the
// emulated CUDA engine (test_cuda_generate_batch.cpp): the reference a batched row must equal,
// written here without generate()/generate_batch(): each prompt alone, in a model built for it
// (batch 1) with a cache of one sequence, greedy by a hand-written first-maximum argmax, and the
// stop rules applied in generate()'s documented order (stop token, stop condition, length).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "core/backend.h"
#include "eval/generate.h"
#include "model/llama.h"

namespace minitron::test {

// The model both engines' tests generate with: small, with grouped KV heads, initialised with std
// 0.3 (not training's 0.02) so that logits lie far apart and greedy paths vary.
struct BatchGenerationModel {
  ModelConfig config;
  std::vector<float> params;
  std::unique_ptr<Backend> backend;

  explicit BatchGenerationModel(std::unique_ptr<Backend> engine) : backend(std::move(engine)) {
    config.vocab_size = 97;
    config.hidden_size = 64;
    config.intermediate_size = 96;
    config.num_hidden_layers = 2;
    config.num_attention_heads = 4;
    config.num_key_value_heads = 2;
    config.head_dim = 16;
    config.rope_theta = 10000.0;
    config.rms_norm_eps = 1e-5;
    config.max_position_embeddings = 256;
    const ParameterTable table(config);
    params.resize(static_cast<std::size_t>(table.total_numel()));
    initialize_parameters(config, table, params, /*seed=*/11, /*std=*/0.3);
  }
};

inline std::vector<float> download(Backend& backend, Tensor t) {
  std::vector<float> host(static_cast<std::size_t>(t.numel));
  backend.download(host.data(), t);
  return host;
}

// The logits a prompt alone gives after each token of `continuation`: a model built for it (batch
// 1) with a cache of one sequence, the prompt, then the continuation one token a forward.
inline std::vector<std::vector<float>> logits_alone(const BatchGenerationModel& m, std::span<const std::int32_t> prompt,
                                                    std::span<const std::int32_t> continuation) {
  const std::int64_t n = static_cast<std::int64_t>(prompt.size());
  LlamaModel model(m.config, *m.backend, 1, n, ModelMode::Inference);
  model.set_parameters(m.params);
  KvCache cache(m.config, *m.backend, n + static_cast<std::int64_t>(continuation.size()));
  ForwardOptions forward;
  forward.cache = &cache;
  BackendBuffer out(*m.backend, m.config.vocab_size, m.backend->activation_dtype());
  model.forward(prompt, 1, n, forward);
  std::vector<std::vector<float>> logits;
  for (const std::int32_t& token : continuation) {
    model.forward(std::span<const std::int32_t>(&token, 1), 1, 1, forward);
    model.logits(out.tensor(), 0, 1);
    logits.push_back(download(*m.backend, out.tensor()));
  }
  return logits;
}

struct AloneRun {
  std::vector<std::int32_t> tokens;
  GenerationEnd end = GenerationEnd::Length;
  // The least gap between the best and the second-best logit over the steps, as a fraction of
  // that step's largest |logit|.
  double smallest_margin = 1e300;
};

struct StopRules {
  std::int64_t max_new_tokens = 0;
  std::vector<std::int32_t> stop_tokens;
  std::function<bool(std::span<const std::int32_t>)> stop_when;
};

inline AloneRun run_alone(const ModelConfig& config, std::span<const float> params, Backend& backend,
                          const std::vector<std::int32_t>& prompt, const StopRules& rules) {
  const std::int64_t n = static_cast<std::int64_t>(prompt.size()), V = config.vocab_size;
  LlamaModel model(config, backend, 1, n, ModelMode::Inference);
  model.set_parameters(params);
  KvCache cache(config, backend, n + rules.max_new_tokens);
  ForwardOptions forward;
  forward.cache = &cache;
  BackendBuffer out(backend, V, backend.activation_dtype());
  std::vector<float> logits(static_cast<std::size_t>(V));
  AloneRun run;
  model.forward(prompt, 1, n, forward);
  std::int64_t row = n - 1;
  while (true) {
    model.logits(out.tensor(), row, 1);
    backend.download(logits.data(), out.tensor());
    std::int32_t best = 0;
    for (std::int32_t v = 1; v < V; ++v)
      if (logits[static_cast<std::size_t>(v)] > logits[static_cast<std::size_t>(best)]) best = v;
    double second = -1e300, largest = 0;
    for (std::int32_t v = 0; v < V; ++v) {
      const double x = logits[static_cast<std::size_t>(v)];
      largest = std::max(largest, std::abs(x));
      if (v != best) second = std::max(second, x);
    }
    run.smallest_margin = std::min(run.smallest_margin, (logits[static_cast<std::size_t>(best)] - second) / largest);
    run.tokens.push_back(best);
    if (std::find(rules.stop_tokens.begin(), rules.stop_tokens.end(), best) != rules.stop_tokens.end()) {
      run.end = GenerationEnd::StopToken;
      break;
    }
    if (rules.stop_when && rules.stop_when(run.tokens)) {
      run.end = GenerationEnd::StopCondition;
      break;
    }
    if (static_cast<std::int64_t>(run.tokens.size()) == rules.max_new_tokens) {
      run.end = GenerationEnd::Length;
      break;
    }
    model.forward(std::span<const std::int32_t>(&run.tokens.back(), 1), 1, 1, forward);
    row = 0;
  }
  return run;
}

// Prompts of different lengths (3 to 17 tokens) over ids [4, vocab): no id that the checkpoints'
// configs name as EOS, so only the rules stop a row.
inline std::vector<std::vector<std::int32_t>> varied_prompts(std::int64_t vocab, int count) {
  std::vector<std::vector<std::int32_t>> prompts;
  for (int i = 0; i < count; ++i) {
    std::vector<std::int32_t> p;
    const int length = 3 + (i * 7) % 15;
    for (int t = 0; t < length; ++t)
      p.push_back(static_cast<std::int32_t>(4 + (i * 37 + t * 17 + t * t * 5 + i * t) % (vocab - 4)));
    prompts.push_back(p);
  }
  return prompts;
}

// Rules that end the alone runs of `prompts` at different steps and in all three ways: the token
// prompt 0 emits at step 3 stops every row that emits it, the pair prompt 1 emits at steps 5-6
// is a stop condition, and the rest run to max_new_tokens. Chosen from unconstrained alone runs
// (the reference), never from the code under test.
inline StopRules varied_rules(const ModelConfig& config, std::span<const float> params, Backend& backend,
                              const std::vector<std::vector<std::int32_t>>& prompts, std::int64_t max_new_tokens) {
  StopRules free_run;
  free_run.max_new_tokens = max_new_tokens;
  const AloneRun first = run_alone(config, params, backend, prompts[0], free_run);
  const AloneRun second = run_alone(config, params, backend, prompts[1], free_run);
  StopRules rules;
  rules.max_new_tokens = max_new_tokens;
  rules.stop_tokens = {first.tokens[3]};
  const std::int32_t a = second.tokens[5], b = second.tokens[6];
  rules.stop_when = [a, b](std::span<const std::int32_t> generated) {
    const std::size_t n = generated.size();
    return n >= 2 && generated[n - 2] == a && generated[n - 1] == b;
  };
  return rules;
}

}  // namespace minitron::test
