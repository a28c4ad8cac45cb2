#include "data/chat_dataset.h"

#include <algorithm>
#include <limits>
#include <optional>
#include <string_view>

#include "data/shards.h"
#include "data/tokenize_corpus.h"
#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"
#include "util/progress.h"

namespace minitron {

namespace fs = std::filesystem;

namespace {

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

std::string render(const ChatTemplate& chat_template, const ChatTemplateInput& base, std::size_t messages,
                   bool add_generation_prompt) {
  ChatTemplateInput input = base;
  input.messages.resize(messages);
  input.add_generation_prompt = add_generation_prompt;
  return chat_template.render(input);
}

}  // namespace

RenderedConversation render_with_assistant_spans(const ChatTemplate& chat_template, const ChatTemplateInput& base,
                                                 std::size_t first_trained, const std::string& what) {
  RenderedConversation out;
  const std::size_t n = base.messages.size();
  out.text = render(chat_template, base, n, false);
  for (std::size_t i = first_trained; i < n; ++i) {
    if (base.messages[i].role != "assistant") continue;
    const std::string prompt = render(chat_template, base, i, true);
    const std::string through = render(chat_template, base, i + 1, false);
    // The spans are positions in the whole text: they are right only if each rendering is the
    // start of the next (templates that rewrite earlier turns, e.g. dropping past reasoning, are not).
    if (through.compare(0, prompt.size(), prompt) != 0 || out.text.compare(0, through.size(), through) != 0)
      fail_expected(
          what,
          str("the chat template does not render messages up to ", i, " (with the generation prompt) and up to ", i + 1,
              " as the start of the whole conversation, so the assistant's tokens cannot be found"),
          "a template whose rendering of a conversation's first turns begins its rendering of the whole");
    std::size_t end = through.size();
    while (end > prompt.size() && is_space(through[end - 1])) --end;
    if (end > prompt.size()) out.trained_spans.emplace_back(prompt.size(), end);
  }
  return out;
}

std::string assistant_end_of_turn(const ChatTemplate& chat_template, const ChatTemplateInput& variables) {
  const std::string answer = "minitron probe answer";
  ChatTemplateInput probe = variables;
  probe.messages = {ChatMessage{"user", "minitron probe question"}, ChatMessage{"assistant", answer}};
  const RenderedConversation r =
      render_with_assistant_spans(chat_template, probe, 0, "the chat template's end of turn");
  if (r.trained_spans.empty()) return "";
  const std::string span =
      r.text.substr(r.trained_spans[0].first, r.trained_spans[0].second - r.trained_spans[0].first);
  const std::size_t at = span.rfind(answer);
  std::string tail = at == std::string::npos ? std::string() : span.substr(at + answer.size());
  std::size_t begin = 0;
  while (begin < tail.size() && is_space(tail[begin])) ++begin;
  return tail.substr(begin);  // the span already ends without whitespace
}

MaskedDocument tokenize_rendered(const Tokenizer& tokenizer, const RenderedConversation& rendered,
                                 bool train_on_prompt) {
  MaskedDocument doc;
  doc.tokens = tokenizer.encode(rendered.text);
  doc.loss_mask.assign(doc.tokens.size(), train_on_prompt ? 1 : 0);
  if (train_on_prompt) return doc;
  // The token index of character boundary c: the tokens of text[:c], when they begin the whole
  // text's tokens; otherwise a token straddles c, and `straddler_after` says whether it counts
  // to the part after c (a span's start) or before it (a span's end), so that a token holding
  // any trained character is trained.
  auto token_boundary = [&](std::size_t c, bool straddler_after) {
    const std::vector<std::int32_t> prefix = tokenizer.encode(std::string_view(rendered.text).substr(0, c));
    std::size_t common = 0;
    while (common < prefix.size() && common < doc.tokens.size() && prefix[common] == doc.tokens[common]) ++common;
    if (common == prefix.size() || straddler_after) return common;
    return std::min(common + 1, doc.tokens.size());
  };
  for (const auto& [begin, end] : rendered.trained_spans) {
    const std::size_t first = token_boundary(begin, true), last = token_boundary(end, false);
    for (std::size_t k = first; k < last; ++k) doc.loss_mask[k] = 1;
  }
  return doc;
}

namespace {

// A list of messages with a string role and string content each; the other keys are left out.
std::vector<ChatMessage> read_messages(const JsonField& list) {
  if (!list.is_array()) list.refuse("a list of messages [{\"role\": ..., \"content\": ...}, ...]");
  std::vector<ChatMessage> messages;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const JsonField message = list[i];
    if (!message.is_object()) message.refuse("a message {\"role\": ..., \"content\": ...}");
    const JsonField role = message.at("role"), content = message.at("content");
    if (!role.is_string()) role.refuse("a role string (\"system\", \"user\", \"assistant\", ...)");
    if (!content.is_string()) content.refuse("a content string");
    messages.push_back(ChatMessage{role.as_string(), content.as_string()});
  }
  return messages;
}

// The first message that is not a system message must not be the assistant's: a conversation
// the model would be trained to open unprompted is almost always a formatting mistake.
void check_turn_order(const std::vector<ChatMessage>& messages, const std::string& what) {
  for (std::size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role == "system") continue;
    if (messages[i].role == "assistant")
      fail_expected(what, str("message ", i, " is an assistant turn before any user turn"),
                    "a user (or other) turn before the first assistant turn");
    return;
  }
}

}  // namespace

MaskedDocument tokenize_chat_record(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                    const nlohmann::json& record, const ChatTokenizeOptions& options,
                                    const std::string& what) {
  const JsonField root(record, what);
  if (!root.is_object()) root.refuse("an object with \"messages\", or with \"prompt\" and \"completion\"");
  ChatTemplateInput input = options.template_variables;
  std::size_t first_trained = 0;
  if (root.has("messages")) {
    input.messages = read_messages(root.at("messages"));
  } else if (root.has("prompt") && root.has("completion")) {
    const JsonField prompt = root.at("prompt"), completion = root.at("completion");
    if (prompt.is_string()) {
      if (!completion.is_string()) completion.refuse("a string, as the prompt is");
      // Plain text, as TRL tokenizes it: the prompt with the tokenizer's special tokens (BOS),
      // then the completion and EOS, which the loss counts.
      MaskedDocument doc;
      doc.tokens = tokenizer.encode(prompt.as_string(), true);
      doc.loss_mask.assign(doc.tokens.size(), options.train_on_prompt ? 1 : 0);
      std::vector<std::int32_t> answer = tokenizer.encode(completion.as_string());
      if (tokenizer.eos_id() && (answer.empty() || answer.back() != *tokenizer.eos_id()))
        answer.push_back(*tokenizer.eos_id());
      doc.tokens.insert(doc.tokens.end(), answer.begin(), answer.end());
      doc.loss_mask.insert(doc.loss_mask.end(), answer.size(), 1);
      return doc;
    }
    if (!prompt.is_array()) prompt.refuse("a string, or a list of messages");
    if (!completion.is_array()) completion.refuse("a list of messages, as the prompt is");
    input.messages = read_messages(prompt);
    first_trained = input.messages.size();
    for (ChatMessage& message : read_messages(completion)) input.messages.push_back(std::move(message));
  } else {
    root.refuse("an object with \"messages\", or with \"prompt\" and \"completion\"");
  }
  check_turn_order(input.messages, what);
  bool any_assistant = false;
  for (std::size_t i = first_trained; i < input.messages.size(); ++i)
    any_assistant = any_assistant || input.messages[i].role == "assistant";
  if (!any_assistant && !options.train_on_prompt)
    fail_expected(what, first_trained > 0 ? "the completion has no assistant message" : "there is no assistant message",
                  "at least one assistant turn for the loss (or --train-on-prompt)");
  const RenderedConversation rendered = render_with_assistant_spans(chat_template, input, first_trained, what);
  return tokenize_rendered(tokenizer, rendered, options.train_on_prompt);
}

namespace {

// Whole documents into shards of at most shard_tokens tokens (a longer document alone).
class SftShardWriter {
 public:
  explicit SftShardWriter(std::int64_t shard_tokens) : shard_tokens_(shard_tokens) {}
  bool full_for(const MaskedDocument& doc) const {
    return !tokens_.empty() && static_cast<std::int64_t>(tokens_.size() + doc.tokens.size()) > shard_tokens_;
  }
  void add(const MaskedDocument& doc) {
    starts_.push_back(static_cast<std::int64_t>(tokens_.size()));
    tokens_.insert(tokens_.end(), doc.tokens.begin(), doc.tokens.end());
    mask_.insert(mask_.end(), doc.loss_mask.begin(), doc.loss_mask.end());
  }
  bool empty() const { return tokens_.empty(); }
  void flush(const fs::path& path, std::vector<fs::path>& written) {
    write_sft_shard(path, tokens_, mask_, starts_);
    written.push_back(path);
    tokens_.clear();
    mask_.clear();
    starts_.clear();
  }

 private:
  std::int64_t shard_tokens_;
  std::vector<std::int32_t> tokens_;
  std::vector<std::uint8_t> mask_;
  std::vector<std::int64_t> starts_;
};

}  // namespace

ChatTokenizeSummary tokenize_chat_to_shards(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                            const std::vector<fs::path>& inputs, const ChatTokenizeOptions& options) {
  if (inputs.empty()) fail_expected("--input", "none given", "at least one JSONL file");
  std::vector<MaskedDocument> documents;
  std::int64_t total_bytes = 0;
  for (const fs::path& input : inputs) {
    std::error_code unreadable;  // read_text_file names a missing or unreadable file below
    const auto bytes = fs::file_size(input, unreadable);
    if (!unreadable) total_bytes += static_cast<std::int64_t>(bytes);
  }
  std::optional<Progress> progress;
  if (options.show_progress) progress.emplace("tokenize --chat", total_bytes, "B");
  try {
    for (const fs::path& input : inputs) {
      const std::string text = read_text_file(input);
      std::size_t at = 0;
      std::int64_t line = 0;
      while (at < text.size()) {
        std::size_t end = text.find('\n', at);
        if (end == std::string::npos) end = text.size();
        const std::string_view content = std::string_view(text).substr(at, end - at);
        if (progress) progress->advance(static_cast<std::int64_t>(std::min(end + 1, text.size()) - at));
        at = end + 1;
        ++line;
        bool blank = true;
        for (char c : content) blank = blank && is_space(c);
        if (blank) continue;
        const std::string what = str(input.string(), " line ", line);
        const nlohmann::json record =
            parse_untrusted_json(content, what, "one JSON object per line (TRL's conversational or prompt-completion)");
        try {
          documents.push_back(tokenize_chat_record(tokenizer, chat_template, record, options, what));
        } catch (const Error& e) {
          // The template's own refusals (raise_exception, an undefined variable) name the template
          // line; the data line is what the user must find.
          if (std::string_view(e.what()).starts_with(what)) throw;
          fail(str(what, ": ", e.what()));
        }
        if (documents.back().tokens.empty())
          fail_expected(what, "it renders to no token", "a conversation the template renders to some text");
      }
    }
  } catch (const Error&) {
    if (progress) progress->abandon();  // the refusal is the last line printed
    throw;
  }
  if (progress) progress->finish();
  if (documents.empty()) fail_expected("--input", "no conversation in the files", "JSONL lines, one record each");

  ChatTokenizeSummary summary;
  std::int64_t total = 0;
  for (const auto& doc : documents) total += static_cast<std::int64_t>(doc.tokens.size());
  if (options.validation_tokens > 0 && options.validation_tokens >= total)
    fail_expected("--validation-tokens",
                  str(options.validation_tokens, " is at least all ", total, " tokens, so no training shard remains"),
                  str("fewer than ", total));
  SftShardWriter validation(std::numeric_limits<std::int64_t>::max()), training(options.shard_tokens);
  std::int64_t train_index = 0;
  std::size_t d = 0;
  const fs::path validation_path = shard_path(options.output_prefix, "val", 0);
  for (; d < documents.size() && summary.validation_tokens < options.validation_tokens; ++d) {
    validation.add(documents[d]);
    summary.validation_tokens += static_cast<std::int64_t>(documents[d].tokens.size());
    ++summary.validation_documents;
  }
  if (!validation.empty()) validation.flush(validation_path, summary.shards);
  for (; d < documents.size(); ++d) {
    if (training.full_for(documents[d]))
      training.flush(shard_path(options.output_prefix, "train", train_index++), summary.shards);
    training.add(documents[d]);
  }
  if (!training.empty()) training.flush(shard_path(options.output_prefix, "train", train_index++), summary.shards);
  for (const auto& doc : documents) {
    summary.tokens += static_cast<std::int64_t>(doc.tokens.size());
    for (std::uint8_t m : doc.loss_mask) summary.trained_tokens += m;
  }
  summary.documents = static_cast<std::int64_t>(documents.size());
  // Shards of an earlier, longer run under the same prefix would be picked up by a
  // PREFIX_train_*.bin pattern.
  for (std::int64_t k = train_index;; ++k) {
    const fs::path stale = shard_path(options.output_prefix, "train", k);
    if (!fs::exists(stale)) break;
    fs::remove(stale);
    summary.removed_stale.push_back(stale);
  }
  if (options.validation_tokens == 0 && fs::exists(validation_path)) {
    fs::remove(validation_path);
    summary.removed_stale.push_back(validation_path);
  }
  return summary;
}

}  // namespace minitron
