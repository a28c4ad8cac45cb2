#include "eval/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "util/error.h"

namespace minitron {

std::int32_t sample_token(std::span<const float> logits, double temperature, double top_p, Xoshiro256& rng) {
  MINITRON_ASSERT(!logits.empty());
  if (temperature <= 0.0)
    return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double total = 0;
  for (std::size_t i = 0; i < p.size(); ++i) total += p[i] = std::exp((logits[i] - max_logit) / temperature);
  std::vector<std::int32_t> order(p.size());
  std::iota(order.begin(), order.end(), 0);
  // Most probable first; ties by id so the order (and the draw) is the same everywhere.
  std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) { return p[a] > p[b]; });
  std::size_t keep = 0;
  double mass = 0;
  while (keep < order.size()) {
    mass += p[static_cast<std::size_t>(order[keep++])] / total;
    if (mass >= top_p) break;
  }
  double kept = 0;
  for (std::size_t i = 0; i < keep; ++i) kept += p[static_cast<std::size_t>(order[i])];
  const double u = static_cast<double>(rng.next() >> 11) * 0x1.0p-53 * kept;  // uniform in [0, kept)
  double cumulative = 0;
  for (std::size_t i = 0; i < keep; ++i) {
    cumulative += p[static_cast<std::size_t>(order[i])];
    if (u < cumulative) return order[i];
  }
  return order[keep - 1];  // u rounded up to the total
}

std::vector<std::int32_t> end_of_text_tokens(const ModelConfig& config, const Tokenizer& tokenizer) {
  std::vector<std::int32_t> ids;
  for (std::int64_t id : config.eos_token_ids) ids.push_back(static_cast<std::int32_t>(id));
  if (tokenizer.eos_id()) ids.push_back(*tokenizer.eos_id());
  return ids;
}

std::vector<std::int32_t> generate(LlamaModel& model, KvCache& cache, std::span<const std::int32_t> prompt,
                                   const SamplingOptions& options, const std::function<void(std::int32_t)>& on_token) {
  cache.clear();
  return continue_generation(model, cache, prompt, options, on_token);
}

std::vector<std::int32_t> continue_generation(LlamaModel& model, KvCache& cache, std::span<const std::int32_t> prompt,
                                              const SamplingOptions& options,
                                              const std::function<void(std::int32_t)>& on_token) {
  if (prompt.empty()) fail_expected("generate", "the prompt encodes to no tokens", "at least one prompt token");
  const std::int64_t n = static_cast<std::int64_t>(prompt.size());
  if (cache.length() + n + options.max_new_tokens > cache.capacity())
    fail_expected("generate",
                  str(cache.length() ? str(cache.length(), " cached + ") : std::string(), n, " prompt tokens + ",
                      options.max_new_tokens, " new tokens"),
                  str("at most ", cache.capacity(), " tokens (the KV cache size)"));
  const std::int64_t V = model.config().vocab_size;
  Backend& backend = model.backend();
  BackendBuffer logits_buffer(backend, V, backend.activation_dtype());
  std::vector<float> logits(static_cast<std::size_t>(V));
  Xoshiro256 rng(options.seed);

  std::vector<std::int32_t> out;
  ForwardOptions forward_options;
  forward_options.cache = &cache;
  model.forward(prompt, 1, n, forward_options);
  std::int64_t last_row = n - 1;
  for (std::int64_t step = 0; step < options.max_new_tokens; ++step) {
    model.logits(logits_buffer.tensor(), last_row, 1);
    backend.download(logits.data(), logits_buffer.tensor());
    const std::int32_t token = sample_token(logits, options.temperature, options.top_p, rng);
    out.push_back(token);
    if (on_token) on_token(token);
    if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) != options.stop_tokens.end()) break;
    if (options.stop_when && options.stop_when(out)) break;
    if (step + 1 == options.max_new_tokens) break;
    model.forward(std::span<const std::int32_t>(&out.back(), 1), 1, 1, forward_options);
    last_row = 0;
  }
  return out;
}

namespace {

// One prompt in the batch: its sequence of the cache and what it has generated.
struct BatchRow {
  std::size_t prompt = 0;
  std::int32_t sequence = 0;
  Xoshiro256 rng{0};
  Generation generation;
};

// Appends the token chosen from `logits` and says whether the row is done (generate()'s tests,
// in generate()'s order).
bool take_token(BatchRow& row, std::span<const float> logits, const SamplingOptions& options) {
  const std::int32_t token = sample_token(logits, options.temperature, options.top_p, row.rng);
  std::vector<std::int32_t>& out = row.generation.tokens;
  out.push_back(token);
  if (std::find(options.stop_tokens.begin(), options.stop_tokens.end(), token) != options.stop_tokens.end()) {
    row.generation.end = GenerationEnd::StopToken;
    return true;
  }
  if (options.stop_when && options.stop_when(out)) {
    row.generation.end = GenerationEnd::StopCondition;
    return true;
  }
  row.generation.end = GenerationEnd::Length;
  return static_cast<std::int64_t>(out.size()) >= options.max_new_tokens;
}

}  // namespace

std::vector<Generation> generate_batch(LlamaModel& model, KvCache& cache,
                                       std::span<const std::vector<std::int32_t>> prompts,
                                       const SamplingOptions& options,
                                       const std::function<void(std::size_t, const Generation&)>& on_finished) {
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const std::int64_t n = static_cast<std::int64_t>(prompts[i].size());
    if (n == 0) fail_expected("generate", str("prompt ", i + 1, " encodes to no tokens"), "at least one prompt token");
    if (n > model.max_sequence())
      fail_expected("generate", str("prompt ", i + 1, " of ", n, " tokens"),
                    str("at most ", model.max_sequence(), " (the model's sequence length)"));
    if (n + options.max_new_tokens > cache.capacity())
      fail_expected("generate", str("prompt ", i + 1, ": ", n, " tokens + ", options.max_new_tokens, " new tokens"),
                    str("at most ", cache.capacity(), " tokens (the KV cache size)"));
  }
  std::vector<Generation> results(prompts.size());
  if (prompts.empty()) return results;
  const std::int64_t width =
      std::min({cache.sequences(), model.max_batch(), static_cast<std::int64_t>(prompts.size())});
  const std::int64_t V = model.config().vocab_size;
  Backend& backend = model.backend();
  BackendBuffer logits_buffer(backend, width * V, backend.activation_dtype());
  std::vector<float> logits(static_cast<std::size_t>(width * V));
  auto row_logits = [&](std::int64_t r) {
    return std::span<const float>(logits).subspan(static_cast<std::size_t>(r * V), static_cast<std::size_t>(V));
  };
  auto finish = [&](BatchRow& row) {
    results[row.prompt] = std::move(row.generation);
    if (on_finished) on_finished(row.prompt, results[row.prompt]);
  };

  std::vector<BatchRow> rows;  // the prompts decoding now, in the order they joined
  std::vector<std::int32_t> free_sequences;
  for (std::int64_t s = width - 1; s >= 0; --s) free_sequences.push_back(static_cast<std::int32_t>(s));
  std::size_t next = 0;
  // Prefills waiting prompts into free sequences, each alone, until the batch is full; a prompt
  // done at its first token (a stop token, max_new_tokens 1) hands its sequence straight on.
  auto refill = [&] {
    while (!free_sequences.empty() && next < prompts.size()) {
      BatchRow row;
      row.prompt = next++;
      row.rng = Xoshiro256(options.seed);
      if (options.max_new_tokens <= 0) {
        finish(row);
        continue;
      }
      row.sequence = free_sequences.back();
      const std::vector<std::int32_t>& prompt = prompts[row.prompt];
      const std::int64_t n = static_cast<std::int64_t>(prompt.size());
      ForwardOptions forward;
      forward.cache = &cache;
      forward.cache_sequences = std::span<const std::int32_t>(&row.sequence, 1);
      cache.clear(row.sequence);
      model.forward(prompt, 1, n, forward);
      model.logits(logits_buffer.tensor(), n - 1, 1);
      backend.download(logits.data(), logits_buffer.tensor().slice(0, V));
      if (take_token(row, row_logits(0), options)) {
        finish(row);
        continue;
      }
      free_sequences.pop_back();
      rows.push_back(std::move(row));
    }
  };

  refill();
  std::vector<std::int32_t> tokens, sequences;
  while (!rows.empty()) {
    const std::int64_t R = static_cast<std::int64_t>(rows.size());
    tokens.clear();
    sequences.clear();
    for (const BatchRow& row : rows) {
      tokens.push_back(row.generation.tokens.back());
      sequences.push_back(row.sequence);
    }
    ForwardOptions forward;
    forward.cache = &cache;
    forward.cache_sequences = sequences;
    model.forward(tokens, R, 1, forward);
    model.logits(logits_buffer.tensor(), 0, R);
    backend.download(logits.data(), logits_buffer.tensor().slice(0, R * V));
    std::vector<BatchRow> going_on;
    for (std::int64_t r = 0; r < R; ++r) {
      BatchRow& row = rows[static_cast<std::size_t>(r)];
      if (take_token(row, row_logits(r), options)) {
        free_sequences.push_back(row.sequence);
        finish(row);
      } else {
        going_on.push_back(std::move(row));
      }
    }
    rows = std::move(going_on);
    refill();
  }
  return results;
}

namespace {
const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD: how HF decodes a partial UTF-8 sequence

// Bytes of `text` that can be shown now: all but a trailing incomplete UTF-8 sequence (kept
// raw by byte-level decoders) or a trailing U+FFFD (what byte-fallback decoders may give).
std::size_t complete_prefix(const std::string& text) {
  if (text.size() >= kReplacement.size() &&
      text.compare(text.size() - kReplacement.size(), kReplacement.size(), kReplacement) == 0)
    return text.size() - kReplacement.size();
  for (std::size_t back = 1; back <= 3 && back <= text.size(); ++back) {
    const auto c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back for the lead
    const std::size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? text.size() - back : text.size();
  }
  return text.size();
}
}  // namespace

std::string IncrementalDecoder::push(std::int32_t token) {
  tokens_.push_back(token);
  const std::string text = tokenizer_.decode(tokens_, skip_special_);
  const std::size_t ready = complete_prefix(text);
  if (ready <= emitted_) return {};
  std::string piece = text.substr(emitted_, ready - emitted_);
  emitted_ = ready;
  return piece;
}

std::string IncrementalDecoder::flush() {
  const std::string text = tokenizer_.decode(tokens_, skip_special_);
  if (text.size() <= emitted_) return {};
  std::string piece = text.substr(emitted_);
  emitted_ = text.size();
  return piece;
}

}  // namespace minitron
