// minitron generate: continue a prompt with a checkpoint (KV cache, streamed to stdout), many
// prompts of a file at once (--prompts-file, batched), or with --chat answer a conversation in
// the chat template's turns.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "cli/chat_setup.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "data/tokenizer.h"
#include "eval/chat.h"
#include "eval/generate.h"
#include "kernels/make_backend.h"
#include "model/checkpoint.h"
#include "model/llama.h"
#include "util/checked_json.h"
#include "util/files.h"
#include "util/progress.h"

namespace minitron::cli {

namespace {

// --chat: the conversation from --messages and --system, then each --user turn answered in
// order, then (interactive) one turn per line of standard input.
int chat(const cxxopts::ParseResult& r, const std::string& model_dir, const Tokenizer& tokenizer,
         const std::filesystem::path& tokenizer_dir, SamplingOptions sampling) {
  if (r.count("prompt")) fail_expected("--prompt", "given with --chat", "--user TEXT or --messages FILE with --chat");
  if (r.count("no-bos")) fail_expected("--no-bos", "given with --chat", "the chat template to write BOS or not");
  const ChatSetup setup = load_chat_setup(r, tokenizer_dir);
  const ChatTemplate chat_template(setup.chat_template);
  ChatTemplateInput conversation = setup.variables;
  if (r.count("messages")) {
    const std::string path = r["messages"].as<std::string>();
    conversation.messages = parse_conversation(read_json_file(path, "--messages"), "--messages " + path);
  }
  if (r.count("system") && !conversation.messages.empty() && conversation.messages[0].role == "system")
    fail_expected("--system", "given, but --messages begins with a system message", "one system message");
  if (r.count("system"))
    conversation.messages.insert(conversation.messages.begin(), ChatMessage{"system", r["system"].as<std::string>()});
  const std::vector<std::string> turns =
      r.count("user") ? r["user"].as<std::vector<std::string>>() : std::vector<std::string>();
  const bool interactive = r.count("interactive") > 0 ||
                           (turns.empty() && !r.count("messages") && ::isatty(STDIN_FILENO) && ::isatty(STDOUT_FILENO));
  const bool answer_messages = !conversation.messages.empty() && conversation.messages.back().role == "user";
  if (!answer_messages && turns.empty() && !interactive)
    fail_expected("generate --chat", "no user turn to answer",
                  "--user TEXT, --messages FILE ending with a user message, or --interactive (a terminal)");

  const LoadedCheckpoint checkpoint = load_checkpoint(model_dir);  // after every check of the flags
  if (!r.count("ignore-eos"))
    sampling.stop_tokens = chat_stop_tokens(chat_template, setup.variables, tokenizer, checkpoint.config, model_dir);
  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  ChatSession session(checkpoint, *backend, tokenizer, chat_template, conversation, sampling);
  auto answer = [&] {
    session.reply([](const std::string& piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    });
    std::fputs("\n", stdout);
    std::fflush(stdout);
  };
  if (answer_messages) answer();
  for (const std::string& turn : turns) {
    session.add_user(turn);
    answer();
  }
  if (!interactive) return 0;
  const bool terminal = ::isatty(STDIN_FILENO);
  if (terminal) std::fputs("(one line a turn; an empty line or end of input ends the chat)\n", stderr);
  std::string line;
  while (true) {
    if (terminal) std::fputs("> ", stderr);
    if (!std::getline(std::cin, line) || line.empty()) break;
    session.add_user(line);
    answer();
  }
  return 0;
}

// --prompts-file: each {"prompt": TEXT} line of a JSONL file continued, --batch-size prompts at a
// time (generate_batch: each stops on its own, the next takes its place), printed as one JSON line
// per prompt in file order once all are done.
int generate_many(const cxxopts::ParseResult& r, const std::string& model_dir, const Tokenizer& tokenizer,
                  SamplingOptions sampling) {
  const std::string path = r["prompts-file"].as<std::string>();
  const std::int64_t batch = in_range<std::int64_t>(r, "batch-size", 1, 1 << 16);
  std::vector<std::string> texts;
  {
    const std::string text = read_text_file(path);
    std::size_t line = 0, begin = 0;
    while (begin < text.size()) {
      const std::size_t end = std::min(text.find('\n', begin), text.size());
      ++line;
      const std::string_view row(text.data() + begin, end - begin);
      begin = end + 1;
      if (row.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      const std::string where = str(path, " line ", line);
      const nlohmann::json document = parse_untrusted_json(row, where, "one JSON object {\"prompt\": TEXT} a line");
      texts.push_back(JsonField(document, where).at("prompt").as_string());
    }
  }
  if (texts.empty()) fail_expected("--prompts-file", str(path, " holds no prompt"), "lines {\"prompt\": TEXT}");

  const ModelConfig config = load_model_config(model_dir);
  const std::int64_t limit = config.max_position_embeddings;
  std::vector<std::vector<std::int32_t>> prompts;
  std::int64_t longest = 1;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    std::vector<std::int32_t> ids = tokenizer.encode(texts[i], /*add_special_tokens=*/!r.count("no-bos"));
    if (ids.empty() && tokenizer.bos_id()) ids.push_back(*tokenizer.bos_id());
    if (ids.empty())
      fail_expected("--prompts-file", str("prompt ", i + 1, " encodes to no tokens"), "a non-empty prompt");
    for (std::int32_t id : ids)
      if (id >= config.vocab_size)
        fail_expected("--tokenizer", str("token id ", id, " from prompt ", i + 1),
                      str("ids below the model's vocab_size ", config.vocab_size));
    if (static_cast<std::int64_t>(ids.size()) >= limit)
      fail_expected("--prompts-file", str("prompt ", i + 1, " of ", ids.size(), " tokens"),
                    str("fewer than max_position_embeddings = ", limit));
    longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(ids.size()));
    prompts.push_back(std::move(ids));
  }
  // One limit for every prompt: the room the longest leaves.
  sampling.max_new_tokens = std::min(sampling.max_new_tokens, limit - longest);
  if (!r.count("ignore-eos")) sampling.stop_tokens = checkpoint_eos_ids(config, tokenizer, model_dir);

  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  const std::int64_t rows = std::min<std::int64_t>(batch, static_cast<std::int64_t>(prompts.size()));
  LlamaModel model(config, *backend, rows, longest, ModelMode::Inference);
  load_parameters(model_dir, model);  // streamed: no host copy of the whole model
  KvCache cache(config, *backend, longest + sampling.max_new_tokens, rows);
  Progress progress("generate", static_cast<std::int64_t>(prompts.size()), "prompts");
  const std::vector<Generation> generations =
      generate_batch(model, cache, prompts, sampling, [&](std::size_t, const Generation&) { progress.advance(); });
  progress.finish();
  for (std::size_t i = 0; i < texts.size(); ++i) {
    const nlohmann::ordered_json line = {
        {"prompt", texts[i]},
        {"completion", tokenizer.decode(generations[i].tokens, true)},
        {"finish_reason", generations[i].end == GenerationEnd::Length ? "length" : "stop"}};
    std::printf("%s\n", line.dump().c_str());
  }
  return 0;
}

}  // namespace

int generate(int argc, char** argv) {
  cxxopts::Options options(
      "generate",
      "Continue a prompt with a model: greedy, or temperature / top-p sampling, up to an EOS id of\n"
      "config.json, generation_config.json or the tokenizer (--ignore-eos: past them).\n"
      "With --chat: answer a conversation rendered by the chat template (--messages FILE, "
      "--system,\nrepeated --user turns, each answered in order; --interactive, or a terminal "
      "without turns,\nreads one user turn a line). Replies stop at the template's end-of-turn "
      "token and every\nEOS id of config.json, generation_config.json and the tokenizer.");
  // clang-format off
  options.add_options()
      ("model", "HF checkpoint directory", cxxopts::value<std::string>())
      ("prompt", "text to continue", cxxopts::value<std::string>())
      ("prompts-file", "JSONL, {\"prompt\": TEXT} a line: continue each, --batch-size at a time, and print one JSON "
                       "line per prompt in file order: {\"prompt\", \"completion\", \"finish_reason\": \"stop\" or "
                       "\"length\"}", cxxopts::value<std::string>())
      ("batch-size", "with --prompts-file: prompts generated at once", cxxopts::value<std::int64_t>()->default_value("8"))
      ("max-new-tokens", "tokens to generate at most", cxxopts::value<std::int64_t>()->default_value("64"))
      ("temperature", "0 = greedy", cxxopts::value<double>()->default_value("0"))
      ("top-p", "nucleus sampling mass (1 = off)", cxxopts::value<double>()->default_value("1"))
      ("seed", "sampling seed", cxxopts::value<std::uint64_t>()->default_value("0"))
      ("tokenizer", "tokenizer.json (default: the model directory's)", cxxopts::value<std::string>())
      ("no-bos", "do not add the tokenizer's BOS before the prompt")
      ("ignore-eos", "keep generating after an end-of-sequence token")
      ("device", "cpu or cuda (default: cuda when a GPU is present)", cxxopts::value<std::string>()->default_value(""));
  options.add_options("chat")
      ("chat", "answer a conversation in the chat template's turns")
      ("messages", "with --chat: JSON file, [{\"role\", \"content\"}, ...] or {\"messages\": [...]}",
       cxxopts::value<std::string>())
      ("system", "with --chat: a system message before the others", cxxopts::value<std::string>())
      ("user", "with --chat: a user turn, answered before the next (repeat the flag)",
       cxxopts::value<std::vector<std::string>>())
      ("interactive", "with --chat: then read one user turn a line from standard input");
  // clang-format on
  add_chat_template_options(options);
  cxxopts::ParseResult r;
  if (!parse_options(options, argc, argv, r)) return 0;
  const std::string model_dir = required<std::string>(r, "model");
  SamplingOptions sampling;
  sampling.max_new_tokens = in_range<std::int64_t>(r, "max-new-tokens", 1, std::int64_t{1} << 20);
  sampling.temperature = in_range<double>(r, "temperature", 0.0, 100.0);
  sampling.top_p = in_range<double>(r, "top-p", 1e-6, 1.0);
  sampling.seed = r["seed"].as<std::uint64_t>();
  if (!r.count("chat"))
    for (const char* flag : {"messages", "system", "user", "interactive", "tokenizer-config", "chat-template", "date"})
      if (r.count(flag)) fail_expected(str("--", flag), "given without --chat", "--chat");

  if (r.count("prompts-file") && (r.count("prompt") || r.count("chat")))
    fail_expected("--prompts-file", str("given with --", r.count("chat") ? "chat" : "prompt"), "one of them");
  if (r.count("batch-size") && !r.count("prompts-file"))
    fail_expected("--batch-size", "given without --prompts-file", "--prompts-file");
  const std::string prompt =
      r.count("chat") || r.count("prompts-file") ? std::string() : required<std::string>(r, "prompt");

  const std::string tokenizer_path = r.count("tokenizer") ? r["tokenizer"].as<std::string>() : model_dir;
  const Tokenizer tokenizer = Tokenizer::load(tokenizer_path);
  if (r.count("chat")) {
    const std::filesystem::path tokenizer_dir = std::filesystem::is_directory(tokenizer_path)
                                                    ? std::filesystem::path(tokenizer_path)
                                                    : std::filesystem::path(tokenizer_path).parent_path();
    return chat(r, model_dir, tokenizer, tokenizer_dir, sampling);
  }
  if (r.count("prompts-file")) return generate_many(r, model_dir, tokenizer, sampling);
  const ModelConfig config = load_model_config(model_dir);
  std::vector<std::int32_t> ids = tokenizer.encode(prompt, /*add_special_tokens=*/!r.count("no-bos"));
  if (ids.empty() && tokenizer.bos_id()) ids.push_back(*tokenizer.bos_id());
  if (ids.empty()) fail_expected("--prompt", "encodes to no tokens", "a non-empty prompt");
  for (std::int32_t id : ids)
    if (id >= config.vocab_size)
      fail_expected("--tokenizer", str("token id ", id, " from the prompt"),
                    str("ids below the model's vocab_size ", config.vocab_size));
  const std::int64_t prompt_tokens = static_cast<std::int64_t>(ids.size());
  const std::int64_t limit = config.max_position_embeddings;
  if (prompt_tokens >= limit)
    fail_expected("--prompt", str(prompt_tokens, " tokens"), str("fewer than max_position_embeddings = ", limit));
  sampling.max_new_tokens = std::min(sampling.max_new_tokens, limit - prompt_tokens);
  if (!r.count("ignore-eos")) sampling.stop_tokens = checkpoint_eos_ids(config, tokenizer, model_dir);

  auto backend = make_backend(choose_device(r["device"].as<std::string>()));
  LlamaModel model(config, *backend, 1, prompt_tokens, ModelMode::Inference);
  load_parameters(model_dir, model);  // streamed: no host copy of the whole model
  KvCache cache(config, *backend, prompt_tokens + sampling.max_new_tokens);

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
