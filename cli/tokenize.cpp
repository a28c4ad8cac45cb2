// minitron tokenize: text or JSONL files to llm.c token shards.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "cli/chat_setup.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "data/chat_dataset.h"
#include "data/tokenize_corpus.h"
#include "data/tokenizer.h"
#include "util/error.h"

namespace minitron::cli {

namespace {

// --chat: TRL-format JSONL to SFT shards.
int tokenize_chat(const cxxopts::ParseResult& result, const std::string& tokenizer_path,
                  const std::vector<std::string>& inputs) {
  if (result.count("split-blank-lines")) fail_expected("--split-blank-lines", "given with --chat", "one or the other");
  ChatTokenizeOptions settings;
  settings.output_prefix = required<std::string>(result, "output-prefix");
  settings.shard_tokens = in_range<std::int64_t>(result, "shard-tokens", 1, 2147483647);
  settings.validation_tokens = in_range<std::int64_t>(result, "validation-tokens", 0, 2147483647);
  settings.train_on_prompt = result.count("train-on-prompt") > 0;
  settings.show_progress = true;
  const std::filesystem::path tokenizer_dir = std::filesystem::is_directory(tokenizer_path)
                                                  ? std::filesystem::path(tokenizer_path)
                                                  : std::filesystem::path(tokenizer_path).parent_path();
  ChatSetup setup = load_chat_setup(result, tokenizer_dir);
  settings.template_variables = setup.variables;
  const ChatTemplate chat_template(setup.chat_template);
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
  const ChatTokenizeSummary summary = tokenize_chat_to_shards(
      tokenizer, chat_template, std::vector<std::filesystem::path>(inputs.begin(), inputs.end()), settings);
  std::printf("tokenized %lld conversations into %lld tokens, %lld of them trained (vocab size %lld)\n",
              static_cast<long long>(summary.documents), static_cast<long long>(summary.tokens),
              static_cast<long long>(summary.trained_tokens), static_cast<long long>(tokenizer.vocab_size()));
  if (settings.validation_tokens > 0)
    std::printf("validation: %lld conversations, %lld tokens\n", static_cast<long long>(summary.validation_documents),
                static_cast<long long>(summary.validation_tokens));
  for (const auto& shard : summary.shards) std::printf("  %s\n", shard.string().c_str());
  for (const auto& stale : summary.removed_stale)
    std::printf("removed stale shard from an earlier run: %s\n", stale.string().c_str());
  return 0;
}

}  // namespace

int tokenize(int argc, char** argv) {
  cxxopts::Options options(
      "tokenize",
      "Tokenize text or JSONL (.jsonl/.json, a \"text\" field per line) into llm.c token shards:\n"
      "PREFIX_val_000000.bin (first --validation-tokens tokens, whole documents), then\n"
      "PREFIX_train_000000.bin, ... Each document starts with the tokenizer's BOS (or ends with\n"
      "its EOS when it has no BOS).\n"
      "With --chat: TRL's JSONL ({\"messages\": [...]} or {\"prompt\", \"completion\"} per line),\n"
      "rendered with the chat template, into SFT shards (tokens, loss mask, document starts) for\n"
      "minitron sft; the loss counts assistant turns and their end-of-turn token.");
  const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  // clang-format off
  options.add_options()
      ("tokenizer", "tokenizer.json, or a model directory holding one", cxxopts::value<std::string>())
      ("input", "Text or JSONL files (repeat the flag or list them after it)",
       cxxopts::value<std::vector<std::string>>())
      ("output-prefix", "Output path prefix, e.g. data/kjv", cxxopts::value<std::string>())
      ("shard-tokens", "Tokens per training shard", cxxopts::value<std::int64_t>()->default_value("100000000"))
      ("validation-tokens", "Tokens (at least, whole documents) for the validation shard",
       cxxopts::value<std::int64_t>()->default_value("0"))
      ("split-blank-lines", "In plain text, each blank-line-separated block is a document")
      ("threads", "Tokenizer threads", cxxopts::value<int>()->default_value(std::to_string(cores)))
      ("chat", "Input is TRL-format chat JSONL; write SFT shards")
      ("train-on-prompt", "With --chat: the loss counts every token, not only the assistant's");
  // clang-format on
  add_chat_template_options(options);
  options.parse_positional({"input"});
  options.positional_help("");
  cxxopts::ParseResult result;
  if (!parse_options(options, argc, argv, result)) return 0;

  const auto tokenizer_path = required<std::string>(result, "tokenizer");
  const auto inputs = required<std::vector<std::string>>(result, "input");
  if (result.count("chat")) return tokenize_chat(result, tokenizer_path, inputs);
  for (const char* flag : {"train-on-prompt", "tokenizer-config", "chat-template", "date"})
    if (result.count(flag)) fail_expected(str("--", flag), "given without --chat", "--chat");
  TokenizeOptions settings;
  settings.output_prefix = required<std::string>(result, "output-prefix");
  settings.shard_tokens = in_range<std::int64_t>(result, "shard-tokens", 1, 2147483647);
  settings.validation_tokens = in_range<std::int64_t>(result, "validation-tokens", 0, 2147483647);
  settings.split_blank_lines = result.count("split-blank-lines") > 0;
  settings.threads = in_range<int>(result, "threads", 1, 1024);
  settings.show_progress = true;

  const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
  const TokenizeSummary summary =
      tokenize_to_shards(tokenizer, std::vector<std::filesystem::path>(inputs.begin(), inputs.end()), settings);

  std::printf("tokenized %lld documents into %lld tokens (vocab size %lld)\n",
              static_cast<long long>(summary.documents), static_cast<long long>(summary.tokens),
              static_cast<long long>(tokenizer.vocab_size()));
  if (settings.validation_tokens > 0)
    std::printf("validation: %lld documents, %lld tokens\n", static_cast<long long>(summary.validation_documents),
                static_cast<long long>(summary.validation_tokens));
  std::printf("training: %lld tokens in %zu shards\n",
              static_cast<long long>(summary.tokens - summary.validation_tokens),
              summary.shards.size() - (settings.validation_tokens > 0 ? 1 : 0));
  for (const auto& shard : summary.shards) std::printf("  %s\n", shard.string().c_str());
  for (const auto& stale : summary.removed_stale)
    std::printf("removed stale shard from an earlier run: %s\n", stale.string().c_str());
  return 0;
}

}  // namespace minitron::cli
