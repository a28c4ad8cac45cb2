// The chat flags shared by `tokenize --chat` and `generate --chat`: where the chat template and
// its BOS/EOS texts come from, and the day strftime_now prints.
#pragma once

#include <filesystem>
#include <string>

#include <cxxopts.hpp>

#include "data/chat_template.h"

namespace minitron::cli {

// A JSON file with its keys in the file's order (a conversation, template variables), refusing
// one that is not JSON naming the flag and the path.
nlohmann::ordered_json read_json_file(const std::string& path, const std::string& flag);

// --tokenizer-config, --chat-template, --date.
void add_chat_template_options(cxxopts::Options& options);

// The template and the variables every rendering takes (bos_token, eos_token, the other special
// tokens, today), from --tokenizer-config (default: tokenizer_config.json in `default_directory`)
// and --chat-template (which replaces the config's template).
struct ChatSetup {
  std::string chat_template;
  ChatTemplateInput variables;  // no messages yet
};
ChatSetup load_chat_setup(const cxxopts::ParseResult& result, const std::filesystem::path& default_directory);

}  // namespace minitron::cli
