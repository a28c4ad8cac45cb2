// minitron eval: perplexity of a model on token shards.
#include <cstdio>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/options.h"
#include "data/dataloader.h"
#include "data/shards.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "train/evaluate.h"

namespace minitron::cli {

int eval(int argc, char** argv) {
  cxxopts::Options options("eval", "Mean next-token cross-entropy and perplexity of a model on token shards.");
  options.add_options()
      ("model", "HF checkpoint directory", cxxopts::value<std::string>())
      ("data", "token shards: a file, a glob or a comma list", cxxopts::value<std::string>())
      ("sequence-length", "tokens per window", cxxopts::value<std::int64_t>()->default_value("256"))
      ("batch-size", "windows per forward pass", cxxopts::value<std::int64_t>()->default_value("8"))
      ("max-windows", "evaluate at most N windows (0 = all)", cxxopts::value<std::int64_t>()->default_value("0"))
      ("device", "cpu or cuda (default: cuda when a GPU is present)", cxxopts::value<std::string>()->default_value(""))
      ("json", "print one JSON object instead of text");
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  const std::string model_dir = required<std::string>(r, "model");
  const auto shards = resolve_shards(required<std::string>(r, "data"));
  const std::int64_t T = in_range<std::int64_t>(r, "sequence-length", 1, 1 << 20);
  const std::int64_t B = in_range<std::int64_t>(r, "batch-size", 1, 1 << 20);
  const std::int64_t max_windows = in_range<std::int64_t>(r, "max-windows", 0, std::int64_t{1} << 40);

  LoadedCheckpoint checkpoint = load_checkpoint(model_dir);
  if (T > checkpoint.config.max_position_embeddings)
    fail_expected("--sequence-length", str(T),
                  str("at most max_position_embeddings = ", checkpoint.config.max_position_embeddings));
  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  EvalLoader loader(shards, B, T, max_windows > 0 ? std::optional<std::int64_t>(max_windows) : std::nullopt,
                    checkpoint.config.vocab_size);
  if (loader.total_windows() == 0)
    fail_expected("--data", "no complete window in the shards", str("at least ", T + 1, " tokens"));
  LlamaModel model(checkpoint.config, *backend, std::min(B, loader.total_windows()), T, ModelMode::Inference);
  model.set_parameters(checkpoint.params);
  LossWorkspace workspace(*backend, checkpoint.config.vocab_size, model.max_batch() * T);
  EvalResult result = evaluate_loss(model, loader, workspace, /*show_progress=*/!r.count("json"));

  if (r.count("json")) {
    nlohmann::json out = {{"model", model_dir}, {"loss", result.loss}, {"perplexity", result.perplexity},
                          {"tokens", result.tokens}, {"windows", result.windows}, {"sequence_length", T},
                          {"device", backend->name()}};
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf("loss %.4f nats/token | perplexity %.3f | %lld tokens in %lld windows of %lld\n", result.loss,
                result.perplexity, static_cast<long long>(result.tokens), static_cast<long long>(result.windows),
                static_cast<long long>(T));
  }
  return 0;
}

}  // namespace minitron::cli
