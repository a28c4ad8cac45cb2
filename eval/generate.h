// Text generation with a KV cache: the prompt runs once, then one token per forward pass.
// Greedy (temperature 0) or temperature / nucleus (top-p) sampling from a seeded RNG.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "model/llama.h"
#include "util/random.h"

namespace minitron {

struct SamplingOptions {
  std::int64_t max_new_tokens = 64;
  double temperature = 0.0;  // 0: greedy (argmax)
  double top_p = 1.0;        // nucleus: keep the most probable tokens whose mass reaches top_p
  std::uint64_t seed = 0;
  std::vector<std::int32_t> stop_tokens;  // generation ends after emitting one of these
  // Also ends generation when it returns true for the tokens generated so far (stop strings).
  std::function<bool(std::span<const std::int32_t> generated)> stop_when;
};

// Picks the next token from one row of logits: argmax (first maximum) when temperature is 0;
// otherwise softmax(logits / temperature), restricted (as HF's TopPLogitsWarper) to the
// smallest set of most probable tokens whose probability reaches top_p (at least one),
// renormalised, and sampled by inverse CDF with one uniform draw from rng.
std::int32_t sample_token(std::span<const float> logits, double temperature, double top_p, Xoshiro256& rng);

// The tokens that end a generation: config.json's eos_token_id(s) and the tokenizer's EOS (eval's
// generative tasks stop there, as lm-evaluation-harness does at the tokenizer's EOS; `minitron
// generate` stops at eval/chat.h's checkpoint_eos_ids, generation_config.json's too).
std::vector<std::int32_t> end_of_text_tokens(const ModelConfig& config, const Tokenizer& tokenizer);

// Runs the prompt (>= 1 token) through the model with `cache` (cleared first), then generates
// up to max_new_tokens tokens, calling on_token for each as soon as it is chosen. The model
// needs max_batch >= 1, max_sequence >= prompt length, and the cache room for prompt +
// max_new_tokens. Returns the generated tokens (the prompt excluded).
std::vector<std::int32_t> generate(LlamaModel& model, KvCache& cache, std::span<const std::int32_t> prompt,
                                   const SamplingOptions& options,
                                   const std::function<void(std::int32_t)>& on_token = {});

// generate() on a cache that already holds the sequence's first tokens (its sequence 0, not
// cleared): `tokens` (>= 1) continue them, so a conversation's next turn runs only what it adds.
// The cache needs room for what it holds + tokens + max_new_tokens. On return it holds every
// token run through the model: the prompt and the generated tokens but the last.
std::vector<std::int32_t> continue_generation(LlamaModel& model, KvCache& cache, std::span<const std::int32_t> tokens,
                                              const SamplingOptions& options,
                                              const std::function<void(std::int32_t)>& on_token = {});

// Why a generation ended: a stop token (emitted, and kept in the output), the stop condition
// (stop_when), or max_new_tokens.
enum class GenerationEnd { StopToken, StopCondition, Length };

struct Generation {
  std::vector<std::int32_t> tokens;  // the prompt excluded
  GenerationEnd end = GenerationEnd::Length;
};

// Batched generation: up to min(cache.sequences(), model.max_batch()) prompts decode together,
// each in its own sequence of the cache (no padding: every row attends to its own tokens only,
// ForwardOptions::cache_sequences). A prompt is prefilled alone (a batch of one, as generate()
// does), then joins the rows that decode one token each per forward; a row that stops (its stop
// token, stop_when, or max_new_tokens) leaves the batch at once and the next prompt takes its
// sequence, so finished rows cost nothing and the batch stays full while prompts remain. Each
// row keeps its own RNG seeded with options.seed, so a prompt's generation is what generate()
// gives it alone wherever the engine's products are row-independent (the CPU engine's are up
// to 64 rows: bit for bit). Needs model.max_sequence() >= the longest prompt and cache room for
// each prompt + max_new_tokens. on_finished(i, generation) runs as prompt i finishes (progress);
// the result is in prompt order.
std::vector<Generation> generate_batch(LlamaModel& model, KvCache& cache,
                                       std::span<const std::vector<std::int32_t>> prompts,
                                       const SamplingOptions& options,
                                       const std::function<void(std::size_t, const Generation&)>& on_finished = {});

// Streams decoded text: push() returns the text the new token adds, computed as the
// difference of decoded prefixes, and holds text back while it ends in an incomplete UTF-8
// sequence (raw bytes, or U+FFFD as HF byte-fallback gives), so characters are never split.
class IncrementalDecoder {
 public:
  explicit IncrementalDecoder(const Tokenizer& tokenizer, bool skip_special_tokens = true)
      : tokenizer_(tokenizer), skip_special_(skip_special_tokens) {}
  std::string push(std::int32_t token);
  std::string flush();  // whatever is still held back
 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<std::int32_t> tokens_;
  std::size_t emitted_ = 0;  // bytes of the decoded text already returned
};

}  // namespace minitron
