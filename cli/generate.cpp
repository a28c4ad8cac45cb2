// minitron generate: continue a prompt with a checkpoint (KV cache, streamed to stdout).
#include <algorithm>
#include <cstdio>

#include "cli/commands.h"
#include "cli/options.h"
#include "data/tokenizer.h"
#include "eval/generate.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "model/llama.h"

namespace minitron::cli {

int generate(int argc, char** argv) {
  cxxopts::Options options("generate", "Continue a prompt with a model: greedy, or temperature / top-p sampling.");
  // clang-format off
  options.add_options()
      ("model", "HF checkpoint directory", cxxopts::value<std::string>())
      ("prompt", "text to continue", cxxopts::value<std::string>())
      ("max-new-tokens", "tokens to generate at most", cxxopts::value<std::int64_t>()->default_value("64"))
      ("temperature", "0 = greedy", cxxopts::value<double>()->default_value("0"))
      ("top-p", "nucleus sampling mass (1 = off)", cxxopts::value<double>()->default_value("1"))
      ("seed", "sampling seed", cxxopts::value<std::uint64_t>()->default_value("0"))
      ("tokenizer", "tokenizer.json (default: the model directory's)", cxxopts::value<std::string>())
      ("no-bos", "do not add the tokenizer's BOS before the prompt")
      ("ignore-eos", "keep generating after an end-of-sequence token")
      ("device", "cpu or cuda (default: cuda when a GPU is present)", cxxopts::value<std::string>()->default_value(""));
  // clang-format on
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  const std::string model_dir = required<std::string>(r, "model");
  const std::string prompt = required<std::string>(r, "prompt");
  SamplingOptions sampling;
  sampling.max_new_tokens = in_range<std::int64_t>(r, "max-new-tokens", 1, std::int64_t{1} << 20);
  sampling.temperature = in_range<double>(r, "temperature", 0.0, 100.0);
  sampling.top_p = in_range<double>(r, "top-p", 1e-6, 1.0);
  sampling.seed = r["seed"].as<std::uint64_t>();

  const Tokenizer tokenizer = Tokenizer::load(r.count("tokenizer") ? r["tokenizer"].as<std::string>() : model_dir);
  LoadedCheckpoint checkpoint = load_checkpoint(model_dir);
  std::vector<std::int32_t> ids = tokenizer.encode(prompt, /*add_special_tokens=*/!r.count("no-bos"));
  if (ids.empty() && tokenizer.bos_id()) ids.push_back(*tokenizer.bos_id());
  if (ids.empty()) fail_expected("--prompt", "encodes to no tokens", "a non-empty prompt");
  for (std::int32_t id : ids)
    if (id >= checkpoint.config.vocab_size)
      fail_expected("--tokenizer", str("token id ", id, " from the prompt"),
                    str("ids below the model's vocab_size ", checkpoint.config.vocab_size));
  const std::int64_t prompt_tokens = static_cast<std::int64_t>(ids.size());
  const std::int64_t limit = checkpoint.config.max_position_embeddings;
  if (prompt_tokens >= limit)
    fail_expected("--prompt", str(prompt_tokens, " tokens"), str("fewer than max_position_embeddings = ", limit));
  sampling.max_new_tokens = std::min(sampling.max_new_tokens, limit - prompt_tokens);
  if (!r.count("ignore-eos")) {
    for (std::int64_t id : checkpoint.config.eos_token_ids)
      sampling.stop_tokens.push_back(static_cast<std::int32_t>(id));
    if (tokenizer.eos_id()) sampling.stop_tokens.push_back(*tokenizer.eos_id());
  }

  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  LlamaModel model(checkpoint.config, *backend, 1, prompt_tokens, ModelMode::Inference);
  model.set_parameters(checkpoint.params);
  KvCache cache(checkpoint.config, *backend, prompt_tokens + sampling.max_new_tokens);

  std::fputs(prompt.c_str(), stdout);
  std::fflush(stdout);
  IncrementalDecoder decoder(tokenizer);
  generate(model, cache, ids, sampling, [&](std::int32_t token) {
    const std::string piece = decoder.push(token);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  });
  const std::string rest = decoder.flush();
  std::fwrite(rest.data(), 1, rest.size(), stdout);
  std::fputs("\n", stdout);
  return 0;
}

}  // namespace minitron::cli
