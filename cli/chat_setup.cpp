#include "cli/chat_setup.h"

#include "util/error.h"
#include "util/files.h"

namespace minitron::cli {

namespace fs = std::filesystem;

nlohmann::ordered_json read_json_file(const std::string& path, const std::string& flag) {
  try {
    return nlohmann::ordered_json::parse(read_text_file(path));
  } catch (const nlohmann::ordered_json::parse_error& e) {
    fail_expected(str(flag, " ", path), str("is not JSON: ", e.what()), "a JSON file");
  }
}

void add_chat_template_options(cxxopts::Options& options) {
  // clang-format off
  options.add_options("chat")
      ("tokenizer-config", "tokenizer_config.json (its chat_template, bos_token, eos_token), or a directory holding "
       "one (default: beside the tokenizer)", cxxopts::value<std::string>())
      ("chat-template", "a Jinja file that replaces the config's chat_template", cxxopts::value<std::string>())
      ("date", "the day strftime_now prints, YYYY-MM-DD (templates that ask for it)", cxxopts::value<std::string>());
  // clang-format on
}

ChatSetup load_chat_setup(const cxxopts::ParseResult& result, const fs::path& default_directory) {
  const fs::path config_path = result.count("tokenizer-config") ? fs::path(result["tokenizer-config"].as<std::string>())
                                                                : default_directory / "tokenizer_config.json";
  const bool own_template = result.count("chat-template") > 0;
  ChatTemplateConfig config;
  if (result.count("tokenizer-config") || fs::exists(config_path)) {
    // With --chat-template the config still gives the BOS and EOS texts.
    config = load_chat_template_config(config_path, !own_template);
  } else if (!own_template) {
    fail_expected(config_path.string(), "no such file",
                  "a tokenizer_config.json with a chat_template (--tokenizer-config) or --chat-template FILE");
  }
  ChatSetup setup;
  setup.chat_template = own_template ? read_text_file(result["chat-template"].as<std::string>()) : config.chat_template;
  setup.variables.bos_token = config.bos_token;
  setup.variables.eos_token = config.eos_token;
  setup.variables.extra_variables = config.other_special_tokens;
  if (result.count("date")) setup.variables.today = parse_calendar_date(result["date"].as<std::string>());
  return setup;
}

}  // namespace minitron::cli
