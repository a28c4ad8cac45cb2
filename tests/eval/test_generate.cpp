// Generation: the KV-cache path against full forwards without a cache, seeded sampling, the
// top-p / temperature sampler, and streaming decode of multi-byte characters.
#include <gtest/gtest.h>

#include <unistd.h>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "eval/generate.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"

namespace minitron {
namespace {

namespace fs = std::filesystem;

struct Fixture {
  LoadedCheckpoint checkpoint = load_checkpoint(fs::path(MINITRON_SOURCE_DIR) / "tests/fixtures/llama3_gqa");
  std::unique_ptr<Backend> backend = make_backend("cpu");
};

// Greedy decoding by re-running the whole sequence each step (no cache): the definition the
// cached path must reproduce.
std::vector<std::int32_t> greedy_without_cache(Fixture& f, std::vector<std::int32_t> tokens, std::int64_t steps) {
  const std::int64_t V = f.checkpoint.config.vocab_size;
  LlamaModel model(f.checkpoint.config, *f.backend, 1, static_cast<std::int64_t>(tokens.size()) + steps,
                   ModelMode::Inference);
  model.set_parameters(f.checkpoint.params);
  BackendBuffer out(*f.backend, V, f.backend->activation_dtype());
  std::vector<float> logits(static_cast<std::size_t>(V));
  std::vector<std::int32_t> generated;
  for (std::int64_t s = 0; s < steps; ++s) {
    const std::int64_t T = static_cast<std::int64_t>(tokens.size());
    model.forward(tokens, 1, T);
    model.logits(out.tensor(), T - 1, 1);
    f.backend->download(logits.data(), out.tensor());
    const auto best = static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    generated.push_back(best);
    tokens.push_back(best);
  }
  return generated;
}

TEST(Generate, KvCacheGreedyEqualsFullForwards) {
  Fixture f;
  const std::vector<std::int32_t> prompt{1, 5, 9, 13, 20, 7};
  const std::int64_t steps = 8;
  LlamaModel model(f.checkpoint.config, *f.backend, 1, static_cast<std::int64_t>(prompt.size()), ModelMode::Inference);
  model.set_parameters(f.checkpoint.params);
  KvCache cache(f.checkpoint.config, *f.backend, static_cast<std::int64_t>(prompt.size()) + steps);
  SamplingOptions greedy;
  greedy.max_new_tokens = steps;
  std::vector<std::int32_t> streamed;
  const auto cached = generate(model, cache, prompt, greedy, [&](std::int32_t t) { streamed.push_back(t); });
  EXPECT_EQ(cached, greedy_without_cache(f, prompt, steps));
  EXPECT_EQ(streamed, cached);
  EXPECT_EQ(cache.length(), static_cast<std::int64_t>(prompt.size()) + steps - 1);  // the last token is not fed back

  // A stop token ends generation right after it is emitted.
  SamplingOptions stop = greedy;
  stop.stop_tokens = {cached[2]};
  const auto stopped = generate(model, cache, prompt, stop);
  EXPECT_EQ(stopped, std::vector<std::int32_t>(cached.begin(), cached.begin() + 3));
}

TEST(Generate, SeededSamplingIsDeterministic) {
  Fixture f;
  const std::vector<std::int32_t> prompt{1, 5, 9};
  LlamaModel model(f.checkpoint.config, *f.backend, 1, 3, ModelMode::Inference);
  model.set_parameters(f.checkpoint.params);
  KvCache cache(f.checkpoint.config, *f.backend, 3 + 12);
  SamplingOptions s;
  s.max_new_tokens = 12;
  s.temperature = 1.0;
  s.top_p = 0.9;
  s.seed = 7;
  const auto a = generate(model, cache, prompt, s);
  const auto b = generate(model, cache, prompt, s);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a.size(), 12u);
  EXPECT_THROW(generate(model, cache, std::vector<std::int32_t>{1, 2, 3, 4}, s), Error);  // cache too small
}

TEST(SampleToken, GreedyTakesTheFirstMaximum) {
  Xoshiro256 rng(1);
  const std::vector<float> logits{1, 3, 3, 2};
  EXPECT_EQ(sample_token(logits, 0.0, 1.0, rng), 1);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(sample_token(logits, 1.0, 1e-6, rng), 1);  // top-p keeps the single best
}

// Frequencies over 20000 seeded draws; each bound is 5 binomial standard deviations
// (sqrt(p(1-p)/20000) <= 0.0036), so a correct sampler fails with probability ~1e-6.
double frequency_of_one(const std::vector<float>& logits, double temperature, double top_p) {
  Xoshiro256 rng(42);
  int ones = 0;
  for (int i = 0; i < 20000; ++i) ones += sample_token(logits, temperature, top_p, rng) == 1;
  return ones / 20000.0;
}

TEST(SampleToken, TemperatureAndTopPFollowTheDistribution) {
  const std::vector<float> logits{0.0f, static_cast<float>(std::log(3.0))};  // p = 0.25, 0.75
  EXPECT_NEAR(frequency_of_one(logits, 1.0, 1.0), 0.75, 5 * 0.0031);
  // Temperature 2: p1 = sqrt(3) / (1 + sqrt(3)) = 0.634.
  EXPECT_NEAR(frequency_of_one(logits, 2.0, 1.0), std::sqrt(3.0) / (1 + std::sqrt(3.0)), 5 * 0.0035);
  EXPECT_EQ(frequency_of_one(logits, 1.0, 0.7), 1.0);                 // 0.75 alone reaches 0.7: the other token is cut
  EXPECT_NEAR(frequency_of_one(logits, 1.0, 0.8), 0.75, 5 * 0.0031);  // both kept
}

// A byte-fallback tokenizer: <0x00>..<0xFF> are ids 1..256, decoded by ByteFallback + Fuse.
TEST(IncrementalDecoder, HoldsBackPartialCharacters) {
  nlohmann::json vocab = {{"<unk>", 0}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = b + 1;
  }
  nlohmann::json tok = {
      {"version", "1.0"},
      {"added_tokens", nlohmann::json::array()},
      {"normalizer", nullptr},
      {"pre_tokenizer", nullptr},
      {"post_processor", nullptr},
      {"decoder",
       {{"type", "Sequence"}, {"decoders", nlohmann::json::array({{{"type", "ByteFallback"}}, {{"type", "Fuse"}}})}}},
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"vocab", vocab},
        {"merges", nlohmann::json::array()}}}};
  const fs::path path = fs::temp_directory_path() / ("minitron_decoder_test_" + std::to_string(::getpid()) + ".json");
  std::ofstream(path) << tok.dump();
  const Tokenizer tokenizer = Tokenizer::load(path);
  fs::remove(path);
  IncrementalDecoder decoder(tokenizer);
  EXPECT_EQ(decoder.push(1 + 'a'), "a");
  EXPECT_EQ(decoder.push(1 + 0xE2), "");  // "€" is E2 82 AC
  EXPECT_EQ(decoder.push(1 + 0x82), "");
  EXPECT_EQ(decoder.push(1 + 0xAC), "\xE2\x82\xAC");
  EXPECT_EQ(decoder.push(1 + 'b'), "b");
  EXPECT_EQ(decoder.flush(), "");
}

}  // namespace
}  // namespace minitron
