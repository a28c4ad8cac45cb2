// One CPU training step (forward, cross-entropy, backward, AdamW) of the fixed bench model,
// the same model bench/torch_train_step.py times in PyTorch: bench/run_cpu.sh prints the ratio.
// BM_TrainStepRecompute times the same step per activation-recompute mode (0 none, 1 selective,
// 2 full) beside the bytes each keeps: bench/results/recompute.md.
#include <benchmark/benchmark.h>

#include <vector>

#include "kernels/make_backend.h"
#include "model/llama.h"
#include "train/losses.h"
#include "train/optimizer.h"

namespace minitron {
namespace {

ModelConfig bench_config() {
  ModelConfig c;
  c.vocab_size = 4096;
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.rope_theta = 10000.0;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 4096;
  return c;
}

void time_train_step(benchmark::State& state, ActivationRecompute recompute) {
  const std::int64_t B = state.range(0), T = state.range(1);
  const ModelConfig config = bench_config();
  auto backend = make_backend("cpu");
  LlamaModel model(config, *backend, B, T, ModelMode::Training, recompute);
  std::vector<float> params(static_cast<std::size_t>(model.table().total_numel()));
  initialize_parameters(config, model.table(), params, 1);
  model.set_parameters(params);
  LossWorkspace workspace(*backend, config.vocab_size, B * T);
  OptimizerConfig oc;
  oc.total_steps = 1 << 20;
  AdamW optimizer(model, oc);
  std::vector<std::int32_t> inputs(static_cast<std::size_t>(B * T)), targets(inputs.size());
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = static_cast<std::int32_t>((i * 2654435761u) % 4096);
    targets[i] = static_cast<std::int32_t>((i * 40503u + 7) % 4096);
  }
  std::int64_t step = 0;
  for (auto _ : state) {
    model.zero_gradients();
    model.forward(inputs, B, T);
    benchmark::DoNotOptimize(cross_entropy_loss(model, targets, workspace, 1.0f));
    model.backward();
    optimizer.step(step++);
  }
  state.counters["tokens_per_second"] =
      benchmark::Counter(static_cast<double>(B * T), benchmark::Counter::kIsIterationInvariantRate);
  const ActivationArenaBytes bytes = model.activation_arena_bytes();
  state.counters["saved_activation_MiB"] = static_cast<double>(bytes.saved) / (1 << 20);
  state.counters["workspace_MiB"] = static_cast<double>(bytes.workspace) / (1 << 20);
}

void BM_TrainStep(benchmark::State& state) { time_train_step(state, ActivationRecompute::None); }
BENCHMARK(BM_TrainStep)->Args({4, 256})->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(5.0);

void BM_TrainStepRecompute(benchmark::State& state) {
  const ActivationRecompute modes[] = {ActivationRecompute::None, ActivationRecompute::Selective,
                                       ActivationRecompute::Full};
  state.SetLabel(activation_recompute_name(modes[state.range(2)]));
  time_train_step(state, modes[state.range(2)]);
}
BENCHMARK(BM_TrainStepRecompute)
    ->Args({4, 256, 0})
    ->Args({4, 256, 1})
    ->Args({4, 256, 2})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(5.0);

}  // namespace
}  // namespace minitron

BENCHMARK_MAIN();
