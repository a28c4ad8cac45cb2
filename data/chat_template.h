// Conversations rendered into a model's prompt text by the checkpoint's own chat template, exactly
// as transformers' apply_chat_template does (Jinja2 with trim_blocks and lstrip_blocks), by the
// Jinja subset in data/jinja_*.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace minitron {

struct ChatMessage {
  std::string role;
  std::string content;
  // The message's other keys (tool_calls, reasoning_content, name, ...), given to the template as
  // they are: a JSON object, its key order kept. A "content" here (null, or a list of parts)
  // replaces the string content.
  nlohmann::ordered_json other_fields = nlohmann::ordered_json::object();
};

// A calendar day for strftime_now: templates like Llama 3.1's print "Today Date: 26 Jul 2024";
// the caller says which day, so that a rendering never depends on the clock.
struct CalendarDate {
  int year = 0;
  int month = 0;  // 1..12
  int day = 0;    // 1..31
};

struct ChatTemplateInput {
  std::vector<ChatMessage> messages;
  bool add_generation_prompt = false;
  std::string bos_token;
  std::string eos_token;
  // More template variables (tools, documents, date_string, ...): a JSON object, its key order kept.
  // tools and documents are none unless given here, as in apply_chat_template.
  nlohmann::ordered_json extra_variables = nlohmann::ordered_json::object();
  // What strftime_now formats; a template that calls it without a date is refused.
  std::optional<CalendarDate> today;
};

namespace jinja {
struct Template;
}

// A template parsed once, to render many conversations (a training set).
class ChatTemplate {
 public:
  // Throws minitron::Error naming the line and column of a syntax error or unsupported construct.
  explicit ChatTemplate(const std::string& template_text);
  // Throws minitron::Error naming the template line and column of a failure, including the
  // template's own raise_exception(...).
  std::string render(const ChatTemplateInput& input) const;

 private:
  std::shared_ptr<const jinja::Template> parsed_;
};

// ChatTemplate(template_text).render(input).
std::string render_chat_template(const std::string& template_text, const ChatTemplateInput& input);

// What tokenizer_config.json says about chat: the template (a string, or the default of the
// [{name, template}] list some checkpoints carry) and the BOS/EOS token texts it is rendered with.
struct ChatTemplateConfig {
  std::string chat_template;
  std::string bos_token;
  std::string eos_token;
  // The rest of transformers' special_tokens_map that the config sets (unk_token, sep_token,
  // pad_token, cls_token, mask_token: their texts; additional_special_tokens: a list of texts),
  // which apply_chat_template also passes to the template: a JSON object for extra_variables.
  nlohmann::ordered_json other_special_tokens = nlohmann::ordered_json::object();
};

// Reads `tokenizer_config` (the file, or the directory holding it). Throws, naming the file, when
// it has no chat_template and `template_required` (a template given elsewhere needs only the tokens).
ChatTemplateConfig load_chat_template_config(const std::filesystem::path& tokenizer_config,
                                             bool template_required = true);

// A conversation file: [{"role", "content", ...}, ...] or {"messages": [...]} (TRL's
// conversational format, one record); keys other than role and content go to other_fields.
std::vector<ChatMessage> parse_conversation(const nlohmann::ordered_json& conversation, const std::string& what);

// "2024-07-26" -> {2024, 7, 26}; throws on anything else.
CalendarDate parse_calendar_date(const std::string& text);

}  // namespace minitron
