// Batched generation on the emulated CUDA engine. Unlike the CPU engine's, its products are not
// promised to be row-independent: cuBLASLt may pick another algorithm (another summation order)
// for 10 rows than for 1 (the emulator's, OpenBLAS, does as well), and activations are stored in
// bf16, so a row of a batch can differ from its alone run by a few bf16 roundings. What must hold,
// and is checked: (1) a batched forward's logits are each row's alone logits to within 4 bf16
// ulps of the row's largest logit (no cross-talk between rows, no wrong cache sequence, which
// would be off by far more); (2) generate_batch's rows are their alone runs' tokens exactly,
// for prompts whose alone runs never have their two best logits closer than 8 such ulps
// (asserted of the reference), so no rounding difference can flip a greedy choice.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "kernels/cuda/cuda_backend_factory.h"
#include "tests/eval/batch_generation_test_util.h"

namespace minitron::test {
namespace {

constexpr double kBf16Ulp = 1.0 / 256;  // bf16 keeps 8 significant bits: 2^-8 relative

struct Fixture : BatchGenerationModel {
  Fixture() : BatchGenerationModel(make_cuda_backend()) {}
};

TEST(CudaBatchedCacheForward, EachRowsLogitsAreItsAloneLogitsWithinBf16Rounding) {
  Fixture f;
  const std::int64_t V = f.config.vocab_size;
  constexpr int kRows = 20;  // enough rows for the emulator's sgemm to round some differently
  const std::vector<std::vector<std::int32_t>> prompts = varied_prompts(V, kRows);
  std::vector<std::int32_t> sequence_of, next;
  std::vector<std::size_t> order;  // the prompt of each batch row
  for (int i = 0; i < kRows; ++i) {
    sequence_of.push_back((i * 7 + 3) % kRows);
    next.push_back(4 + (i * 13) % (V - 4));
    order.push_back(static_cast<std::size_t>((i * 11 + 2) % kRows));
  }
  std::vector<std::vector<float>> alone;
  for (std::size_t i = 0; i < prompts.size(); ++i)
    alone.push_back(logits_alone(f, prompts[i], std::vector{next[i]})[0]);
  LlamaModel model(f.config, *f.backend, kRows, 17, ModelMode::Inference);
  model.set_parameters(f.params);
  KvCache cache(f.config, *f.backend, 18, kRows);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    ForwardOptions forward;
    forward.cache = &cache;
    forward.cache_sequences = std::span<const std::int32_t>(&sequence_of[i], 1);
    model.forward(prompts[i], 1, static_cast<std::int64_t>(prompts[i].size()), forward);
  }
  std::vector<std::int32_t> tokens, sequences;
  for (std::size_t p : order) {
    tokens.push_back(next[p]);
    sequences.push_back(sequence_of[p]);
  }
  ForwardOptions forward;
  forward.cache = &cache;
  forward.cache_sequences = sequences;
  model.forward(tokens, kRows, 1, forward);
  BackendBuffer out(*f.backend, kRows * V, f.backend->activation_dtype());
  model.logits(out.tensor(), 0, kRows);
  const std::vector<float> batched = download(*f.backend, out.tensor());
  for (std::size_t r = 0; r < order.size(); ++r) {
    const std::vector<float>& want = alone[order[r]];
    double largest = 0, worst = 0;
    for (float x : want) largest = std::max(largest, std::abs(static_cast<double>(x)));
    for (std::int64_t v = 0; v < V; ++v)
      worst = std::max(worst, std::abs(static_cast<double>(batched[static_cast<std::size_t>(r * V + v)]) -
                                       want[static_cast<std::size_t>(v)]));
    // A few bf16 roundings of the row's stream taken in another order: 4 ulps of its largest logit.
    EXPECT_LE(worst, 4 * kBf16Ulp * largest) << "row " << r << " (prompt " << order[r] << ")";
  }
}

TEST(CudaGenerateBatch, EveryRowIsItsPromptAlone) {
  Fixture f;
  // The premise: prompts whose free-running alone runs never bring a greedy choice within reach
  // of rounding (8 ulps, twice the bound above). The rules below only cut those runs short.
  constexpr std::int64_t kMaxNew = 8;
  StopRules free_run;
  free_run.max_new_tokens = kMaxNew;
  std::vector<std::vector<std::int32_t>> prompts;
  for (const auto& p : varied_prompts(f.config.vocab_size, 60))
    if (prompts.size() < 5 && run_alone(f.config, f.params, *f.backend, p, free_run).smallest_margin > 8 * kBf16Ulp)
      prompts.push_back(p);
  ASSERT_EQ(prompts.size(), 5u) << "too few prompts with decisive greedy choices";
  const StopRules rules = varied_rules(f.config, f.params, *f.backend, prompts, kMaxNew);
  std::vector<AloneRun> alone;
  std::set<GenerationEnd> ends;
  for (const auto& p : prompts) {
    alone.push_back(run_alone(f.config, f.params, *f.backend, p, rules));
    ends.insert(alone.back().end);
  }
  EXPECT_GE(ends.size(), 2u) << "the rules should end rows in different ways";
  SamplingOptions options;
  options.max_new_tokens = rules.max_new_tokens;
  options.stop_tokens = rules.stop_tokens;
  options.stop_when = rules.stop_when;
  for (const std::int64_t batch : {2, 8}) {
    LlamaModel model(f.config, *f.backend, batch, 17, ModelMode::Inference);
    model.set_parameters(f.params);
    KvCache cache(f.config, *f.backend, 17 + rules.max_new_tokens, batch);
    const std::vector<Generation> got = generate_batch(model, cache, prompts, options);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(got[i].tokens, alone[i].tokens) << "batch " << batch << ", prompt " << i;
      EXPECT_EQ(got[i].end, alone[i].end) << "batch " << batch << ", prompt " << i;
    }
  }
}

}  // namespace
}  // namespace minitron::test
