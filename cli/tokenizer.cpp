// minitron tokenizer encode|decode|train|chat: a tokenizer.json, or its chat template, from the command line.
#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "cli/chat_setup.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "data/bpe_trainer.h"
#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron::cli {

namespace {

std::string read_stdin() {
  std::string data((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  return data;
}

int encode_command(int argc, char** argv) {
  cxxopts::Options options("tokenizer encode",
                           "Encode text (--text, or all of stdin byte for byte) to token ids on one line.");
  // clang-format off
  options.add_options()("tokenizer", "tokenizer.json, or a directory holding one", cxxopts::value<std::string>())(
      "text", "text to encode (default: read stdin)", cxxopts::value<std::string>())(
      "json", "print a JSON array instead of space-separated ids")(
      "add-special-tokens", "add the post-processor's tokens (e.g. BOS)");
  // clang-format on
  cxxopts::ParseResult result;
  if (!parse_options(options, argc, argv, result)) return 0;
  Tokenizer tok = Tokenizer::load(required<std::string>(result, "tokenizer"));
  std::string text = result.count("text") ? result["text"].as<std::string>() : read_stdin();
  auto ids = tok.encode(text, result.count("add-special-tokens") > 0);
  bool json = result.count("json") > 0;
  std::string line = json ? "[" : "";
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i) line += json ? ", " : " ";
    line += std::to_string(ids[i]);
  }
  if (json) line += "]";
  line += "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  return 0;
}

std::vector<std::int32_t> parse_ids(const std::string& text) {
  std::vector<std::int32_t> ids;
  std::string token;
  auto flush = [&] {
    if (token.empty()) return;
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(token.c_str(), &end, 10);
    if (*end != '\0' || errno || v < 0 || v > INT32_MAX)
      fail_expected("--ids", str("'", token, "' is not a token id"),
                    "non-negative integers separated by spaces or commas");
    ids.push_back(static_cast<std::int32_t>(v));
    token.clear();
  };
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c)) || c == ',' || c == '[' || c == ']')
      flush();
    else
      token += c;
  }
  flush();
  return ids;
}

int decode_command(int argc, char** argv) {
  cxxopts::Options options("tokenizer decode",
                           "Decode token ids (--ids, or stdin; spaces, commas or a JSON array) to text.");
  // clang-format off
  options.add_options()("tokenizer", "tokenizer.json, or a directory holding one", cxxopts::value<std::string>())(
      "ids", "ids to decode, e.g. \"9906 1917\" (default: read stdin)", cxxopts::value<std::string>())(
      "skip-special-tokens", "leave out special added tokens");
  // clang-format on
  cxxopts::ParseResult result;
  if (!parse_options(options, argc, argv, result)) return 0;
  Tokenizer tok = Tokenizer::load(required<std::string>(result, "tokenizer"));
  auto ids = parse_ids(result.count("ids") ? result["ids"].as<std::string>() : read_stdin());
  std::string text = tok.decode(ids, result.count("skip-special-tokens") > 0);
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
  return 0;
}

int train_command(int argc, char** argv) {
  cxxopts::Options options("tokenizer train",
                           "Train a byte-level BPE tokenizer (Llama 3 style) and write DIR/tokenizer.json "
                           "and DIR/tokenizer_config.json.");
  // clang-format off
  options.add_options()("vocab-size", "total vocab size, special tokens included",
                        cxxopts::value<std::int64_t>()->default_value("8192"))(
      "input", "text files to train on", cxxopts::value<std::vector<std::string>>())(
      "output", "output directory", cxxopts::value<std::string>())(
      "special-tokens", "extra special tokens after <|begin_of_text|> (BOS) and <|end_of_text|> (EOS)",
      cxxopts::value<std::vector<std::string>>())(
      "min-frequency", "smallest pair count that is still merged",
      cxxopts::value<std::int64_t>()->default_value("2"));
  // clang-format on
  options.parse_positional({"input"});
  cxxopts::ParseResult result;
  if (!parse_options(options, argc, argv, result)) return 0;
  BpeTrainOptions train_options;
  train_options.vocab_size = in_range<std::int64_t>(result, "vocab-size", 259, 1 << 24);
  train_options.min_frequency = in_range<std::int64_t>(result, "min-frequency", 1, INT64_MAX);
  if (result.count("special-tokens"))
    for (const auto& t : result["special-tokens"].as<std::vector<std::string>>())
      if (std::find(train_options.special_tokens.begin(), train_options.special_tokens.end(), t) ==
          train_options.special_tokens.end())
        train_options.special_tokens.push_back(t);
  auto inputs = required<std::vector<std::string>>(result, "input");
  std::vector<std::filesystem::path> paths(inputs.begin(), inputs.end());
  std::filesystem::path out = required<std::string>(result, "output");
  TrainedBpe trained = train_bpe_files(paths, train_options, out);
  std::printf("tokenizer: %lld tokens (%lld merges) -> %s\n", static_cast<long long>(trained.vocab_size),
              static_cast<long long>(trained.merges), (out / "tokenizer.json").c_str());
  return 0;
}

int chat_command(int argc, char** argv) {
  cxxopts::Options options("tokenizer chat",
                           "Render a conversation with the checkpoint's chat template (tokenizer_config.json), as "
                           "transformers' apply_chat_template does, and print the text exactly (no newline added).");
  // clang-format off
  options.add_options()("tokenizer-config", "tokenizer_config.json, or a directory holding one",
                        cxxopts::value<std::string>())(
      "conversation", "JSON file: [{\"role\", \"content\"}, ...] or {\"messages\": [...]}",
      cxxopts::value<std::string>())("chat-template", "a Jinja file that replaces the checkpoint's chat_template",
                                     cxxopts::value<std::string>())(
      "add-generation-prompt", "end with the template's opening of an assistant turn")(
      "variables", "JSON file: an object of more template variables (tools, enable_thinking, ...)",
      cxxopts::value<std::string>())("date", "the day strftime_now prints, YYYY-MM-DD (templates that ask for it)",
                                     cxxopts::value<std::string>());
  // clang-format on
  cxxopts::ParseResult result;
  if (!parse_options(options, argc, argv, result)) return 0;
  ChatTemplateConfig config;
  if (result.count("tokenizer-config")) {
    // With --chat-template the checkpoint's file still gives the BOS and EOS texts.
    bool template_required = result.count("chat-template") == 0;
    config = load_chat_template_config(result["tokenizer-config"].as<std::string>(), template_required);
  } else if (!result.count("chat-template")) {
    fail_expected("tokenizer chat", "neither --tokenizer-config nor --chat-template was given", "one or both");
  }
  if (result.count("chat-template")) config.chat_template = read_text_file(result["chat-template"].as<std::string>());
  ChatTemplateInput input;
  std::string conversation = required<std::string>(result, "conversation");
  input.messages = parse_conversation(read_json_file(conversation, "--conversation"), "--conversation " + conversation);
  input.add_generation_prompt = result.count("add-generation-prompt") > 0;
  input.bos_token = config.bos_token;
  input.eos_token = config.eos_token;
  input.extra_variables = config.other_special_tokens;
  if (result.count("variables")) {
    std::string path = result["variables"].as<std::string>();
    nlohmann::ordered_json variables = read_json_file(path, "--variables");
    if (!variables.is_object()) fail_expected("--variables " + path, "is not a JSON object", "{\"tools\": [...], ...}");
    input.extra_variables.update(variables);
  }
  if (result.count("date")) input.today = parse_calendar_date(result["date"].as<std::string>());
  std::string text = render_chat_template(config.chat_template, input);
  std::fwrite(text.data(), 1, text.size(), stdout);
  return 0;
}

void usage(std::FILE* out) {
  std::fputs(
      "usage: minitron tokenizer <encode|decode|train|chat> [--help] [flags]\n\n"
      "  encode  --tokenizer PATH [--text T] [--json] [--add-special-tokens]\n"
      "  decode  --tokenizer PATH [--ids \"1 2 3\"] [--skip-special-tokens]\n"
      "  train   --vocab-size N --input FILES... --output DIR [--special-tokens T...]\n"
      "  chat    --tokenizer-config PATH --conversation FILE [--chat-template FILE] [--add-generation-prompt]\n"
      "          [--variables FILE] [--date YYYY-MM-DD]\n",
      out);
}

}  // namespace

int tokenizer(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "help")) {
    usage(stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string sub = argv[1];
  if (sub == "encode") return encode_command(argc - 1, argv + 1);
  if (sub == "decode") return decode_command(argc - 1, argv + 1);
  if (sub == "train") return train_command(argc - 1, argv + 1);
  if (sub == "chat") return chat_command(argc - 1, argv + 1);
  fail_expected("tokenizer", str("unknown subcommand '", sub, "'"), "encode, decode, train or chat");
}

}  // namespace minitron::cli
