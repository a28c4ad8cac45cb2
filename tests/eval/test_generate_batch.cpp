// Batched generation on the CPU engine: every row of a batch gets exactly what its prompt gets
// alone (tests/eval/batch_generation_test_util.h, written without the code under test), for
// prompts of different lengths, rows that stop at different steps and in different ways, batches
// smaller than the prompts (freed sequences refilled) and larger. The CPU engine's products of up
// to 64 rows are row-independent (kernels/cpu/cpu_backend.cpp), so the batched forward's logits
// equal the alone forward's bit for bit, which the first test checks on the model directly.
#include <gtest/gtest.h>

#include <cstring>
#include <set>

#include "kernels/make_backend.h"
#include "tests/eval/batch_generation_test_util.h"
#include "tests/util/error_test_util.h"

namespace minitron::test {
namespace {

using minitron::testing::error_of;

struct Fixture : BatchGenerationModel {
  Fixture() : BatchGenerationModel(make_backend("cpu")) {}
};

// Twenty sequences prefilled alone into the cache in a shuffled order, then decoded as one batch
// (rows in yet another order) and again with every third row dropped: each row's logits are the
// bits of the same token decoded by a model holding only that sequence. (At 20 rows OpenBLAS's
// sgemm rounds some rows differently from the same row alone; this test fails with it.)
TEST(BatchedCacheForward, EachRowsLogitsAreItsAloneLogitsBitForBit) {
  Fixture f;
  const std::int64_t V = f.config.vocab_size;
  constexpr int kRows = 20;
  const std::vector<std::vector<std::int32_t>> prompts = varied_prompts(V, kRows);
  std::vector<std::int32_t> sequence_of, next, after;
  std::vector<std::size_t> order;  // the prompt of each batch row
  for (int i = 0; i < kRows; ++i) {
    sequence_of.push_back((i * 7 + 3) % kRows);
    next.push_back(4 + (i * 13) % (V - 4));
    after.push_back(4 + (i * 29 + 5) % (V - 4));
    order.push_back(static_cast<std::size_t>((i * 11 + 2) % kRows));
  }

  // Alone: prompt, then next[i], then after[i]; logits of the last two forwards.
  std::vector<std::vector<float>> alone_next, alone_after;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const std::vector<std::vector<float>> logits = logits_alone(f, prompts[i], std::vector{next[i], after[i]});
    alone_next.push_back(logits[0]);
    alone_after.push_back(logits[1]);
  }

  LlamaModel model(f.config, *f.backend, kRows, 17, ModelMode::Inference);
  model.set_parameters(f.params);
  KvCache cache(f.config, *f.backend, 19, kRows);
  BackendBuffer out(*f.backend, kRows * V, f.backend->activation_dtype());
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    ForwardOptions forward;
    forward.cache = &cache;
    forward.cache_sequences = std::span<const std::int32_t>(&sequence_of[i], 1);
    model.forward(prompts[i], 1, static_cast<std::int64_t>(prompts[i].size()), forward);
  }
  for (std::size_t i = 0; i < prompts.size(); ++i)
    EXPECT_EQ(cache.length(sequence_of[i]), static_cast<std::int64_t>(prompts[i].size()));

  auto decode_and_compare = [&](const std::vector<std::size_t>& rows, const std::vector<std::int32_t>& token_of,
                                const std::vector<std::vector<float>>& alone, const char* step) {
    std::vector<std::int32_t> tokens, sequences;
    for (std::size_t p : rows) {
      tokens.push_back(token_of[p]);
      sequences.push_back(sequence_of[p]);
    }
    ForwardOptions forward;
    forward.cache = &cache;
    forward.cache_sequences = sequences;
    const auto R = static_cast<std::int64_t>(rows.size());
    model.forward(tokens, R, 1, forward);
    model.logits(out.tensor(), 0, R);
    const std::vector<float> batched = download(*f.backend, out.tensor().slice(0, R * V));
    for (std::size_t r = 0; r < rows.size(); ++r)
      EXPECT_EQ(std::memcmp(batched.data() + r * V, alone[rows[r]].data(), V * sizeof(float)), 0)
          << step << ": row " << r << " (prompt " << rows[r] << ")";
  };
  decode_and_compare(order, next, alone_next, "all rows");
  std::vector<std::size_t> kept;  // every third row has finished
  for (std::size_t r = 0; r < order.size(); ++r)
    if (r % 3 != 1) kept.push_back(order[r]);
  decode_and_compare(kept, after, alone_after, "rows left");
  EXPECT_EQ(cache.length(sequence_of[order[1]]), static_cast<std::int64_t>(prompts[order[1]].size()) + 1);
  EXPECT_EQ(cache.length(sequence_of[order[0]]), static_cast<std::int64_t>(prompts[order[0]].size()) + 2);
}

TEST(BatchedCacheForward, RejectsSharedOrMissingSequences) {
  Fixture f;
  LlamaModel model(f.config, *f.backend, 2, 4, ModelMode::Inference);
  model.set_parameters(f.params);
  KvCache cache(f.config, *f.backend, 4, 2);
  ForwardOptions forward;
  forward.cache = &cache;
  const std::vector<std::int32_t> tokens = {5, 6};
  const std::vector<std::int32_t> same = {1, 1}, outside = {0, 2};
  forward.cache_sequences = same;
  EXPECT_EQ(error_of([&] { model.forward(tokens, 2, 1, forward); }),
            "forward: KV cache sequence 1 for a row (expected distinct sequences in [0, 2))");
  forward.cache_sequences = outside;
  EXPECT_EQ(error_of([&] { model.forward(tokens, 2, 1, forward); }),
            "forward: KV cache sequence 2 for a row (expected distinct sequences in [0, 2))");
}

// Every row of every batch size against its alone run; the rules stop rows at different steps,
// by a stop token, a stop condition and the length limit (asserted of the reference, so the test
// cannot pass by every row ending the same way).
TEST(GenerateBatch, EveryRowIsItsPromptAloneWhateverTheBatch) {
  Fixture f;
  const std::vector<std::vector<std::int32_t>> prompts = varied_prompts(f.config.vocab_size, 7);
  const StopRules rules = varied_rules(f.config, f.params, *f.backend, prompts, 12);
  std::vector<AloneRun> alone;
  std::set<std::size_t> lengths;
  std::set<GenerationEnd> ends;
  for (const auto& p : prompts) {
    alone.push_back(run_alone(f.config, f.params, *f.backend, p, rules));
    lengths.insert(alone.back().tokens.size());
    ends.insert(alone.back().end);
  }
  ASSERT_GE(lengths.size(), 3u) << "the rules should end rows at different steps";
  ASSERT_EQ(ends.size(), 3u) << "the rules should end rows in all three ways";

  SamplingOptions options;
  options.max_new_tokens = rules.max_new_tokens;
  options.stop_tokens = rules.stop_tokens;
  options.stop_when = rules.stop_when;
  for (const std::int64_t batch : {1, 2, 3, 7, 10}) {
    LlamaModel model(f.config, *f.backend, batch, 17, ModelMode::Inference);
    model.set_parameters(f.params);
    KvCache cache(f.config, *f.backend, 17 + rules.max_new_tokens, batch);
    std::vector<std::size_t> finished;
    const std::vector<Generation> got = generate_batch(
        model, cache, prompts, options, [&](std::size_t i, const Generation&) { finished.push_back(i); });
    ASSERT_EQ(got.size(), prompts.size());
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(got[i].tokens, alone[i].tokens) << "batch " << batch << ", prompt " << i;
      EXPECT_EQ(got[i].end, alone[i].end) << "batch " << batch << ", prompt " << i;
    }
    std::vector<std::size_t> sorted = finished;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, std::vector<std::size_t>({0, 1, 2, 3, 4, 5, 6})) << "each prompt reported once";
  }
}

// Sampling: each row draws from its own RNG seeded with the options' seed, as generate() alone.
TEST(GenerateBatch, SampledRowsEqualGenerateAlone) {
  Fixture f;
  const std::vector<std::vector<std::int32_t>> prompts = varied_prompts(f.config.vocab_size, 4);
  SamplingOptions options;
  options.max_new_tokens = 10;
  options.temperature = 1.0;
  options.top_p = 0.9;
  options.seed = 3;
  LlamaModel model(f.config, *f.backend, 3, 17, ModelMode::Inference);
  model.set_parameters(f.params);
  KvCache cache(f.config, *f.backend, 27, 3);
  const std::vector<Generation> got = generate_batch(model, cache, prompts, options);
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    LlamaModel one(f.config, *f.backend, 1, 17, ModelMode::Inference);
    one.set_parameters(f.params);
    KvCache alone_cache(f.config, *f.backend, 27);
    EXPECT_EQ(got[i].tokens, generate(one, alone_cache, prompts[i], options)) << "prompt " << i;
    EXPECT_EQ(got[i].end, GenerationEnd::Length);
  }
}

TEST(GenerateBatch, BadShapesAreOneClearLine) {
  Fixture f;
  LlamaModel model(f.config, *f.backend, 2, 4, ModelMode::Inference);
  model.set_parameters(f.params);
  KvCache cache(f.config, *f.backend, 8, 2);
  SamplingOptions options;
  options.max_new_tokens = 4;
  const std::vector<std::vector<std::int32_t>> long_prompt = {{5, 6}, {5, 6, 7, 8, 9}};
  EXPECT_EQ(error_of([&] { generate_batch(model, cache, long_prompt, options); }),
            "generate: prompt 2 of 5 tokens (expected at most 4 (the model's sequence length))");
  const std::vector<std::vector<std::int32_t>> full = {{5, 6, 7, 8}, {}};
  EXPECT_EQ(error_of([&] { generate_batch(model, cache, full, options); }),
            "generate: prompt 2 encodes to no tokens (expected at least one prompt token)");
  options.max_new_tokens = 5;
  EXPECT_EQ(error_of([&] { generate_batch(model, cache, full, options); }),
            "generate: prompt 1: 4 tokens + 5 new tokens (expected at most 8 tokens (the KV cache size))");
}

}  // namespace
}  // namespace minitron::test
