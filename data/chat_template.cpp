#include "data/chat_template.h"

#include <cstdio>
#include <ctime>

#include "data/jinja_builtins.h"
#include "data/jinja_render.h"
#include "data/jinja_syntax.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace {

using nlohmann::ordered_json;

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
std::int64_t days_since_epoch(int year, int month, int day) {
  std::int64_t y = month <= 2 ? year - 1 : year;
  std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  std::int64_t year_of_era = y - era * 400;
  std::int64_t day_of_year = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1;
  std::int64_t day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
  return era * 146097 + day_of_era - 719468;
}

std::string format_date(const CalendarDate& date, const std::string& format) {
  std::tm t{};
  t.tm_year = date.year - 1900;
  t.tm_mon = date.month - 1;
  t.tm_mday = date.day;
  t.tm_wday = static_cast<int>(((days_since_epoch(date.year, date.month, date.day) % 7) + 11) % 7);
  t.tm_yday = static_cast<int>(days_since_epoch(date.year, date.month, date.day) - days_since_epoch(date.year, 1, 1));
  char buffer[256];
  std::size_t n = format.empty() ? 0 : std::strftime(buffer, sizeof buffer, format.c_str(), &t);
  return std::string(buffer, n);
}

std::string token_text(const ordered_json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return "";
  const ordered_json& token = config[key];
  if (token.is_string()) return token.get<std::string>();
  // transformers writes AddedToken objects as {"__type": "AddedToken", "content": "<s>", ...}.
  if (token.is_object() && token.contains("content") && token["content"].is_string())
    return token["content"].get<std::string>();
  fail_expected(str("tokenizer_config.json ", key), "is neither a string nor an AddedToken", "a token's text");
}

}  // namespace

ChatTemplate::ChatTemplate(const std::string& template_text)
    : parsed_(std::make_shared<const jinja::Template>(jinja::parse_template(template_text))) {}

std::string render_chat_template(const std::string& template_text, const ChatTemplateInput& input) {
  return ChatTemplate(template_text).render(input);
}

std::string ChatTemplate::render(const ChatTemplateInput& input) const {
  jinja::Value variables = jinja::Value::new_dict();
  jinja::ValueList messages;
  for (const ChatMessage& m : input.messages) {
    jinja::Value message = jinja::Value::new_dict();
    message.dict->set("role", jinja::Value::from_string(m.role));
    message.dict->set("content", jinja::Value::from_string(m.content));
    if (!m.other_fields.is_object())
      fail_expected(str("message of role ", m.role), "other_fields is not a JSON object", "{\"key\": value, ...}");
    for (const auto& [key, value] : m.other_fields.items())
      if (key != "role") message.dict->set(key, jinja::Value::from_json(value));
    messages.push_back(message);
  }
  variables.dict->set("messages", jinja::Value::from_list(std::move(messages)));
  variables.dict->set("add_generation_prompt", jinja::Value::from_bool(input.add_generation_prompt));
  variables.dict->set("bos_token", jinja::Value::from_string(input.bos_token));
  variables.dict->set("eos_token", jinja::Value::from_string(input.eos_token));
  std::optional<CalendarDate> today = input.today;
  variables.dict->set(
      "strftime_now", jinja::Value::from_function([today](const jinja::CallArguments& a) {
        if (!today)
          throw jinja::BuiltinProblem{"strftime_now() was called but no date was given",
                                      "a date from the caller (--date YYYY-MM-DD)"};
        if (a.positional.size() != 1 || a.positional[0].kind != jinja::Value::Kind::String)
          throw jinja::BuiltinProblem{"strftime_now() takes one format string", "strftime_now(\"%d %b %Y\")"};
        return jinja::Value::from_string(format_date(*today, a.positional[0].string));
      }));
  // apply_chat_template always passes tools= and documents= (None unless given), so a template's
  // `tools is defined` is true and `tools is none` decides.
  variables.dict->set("tools", jinja::Value::none());
  variables.dict->set("documents", jinja::Value::none());
  if (!input.extra_variables.is_object())
    fail_expected("chat template variables", "are not a JSON object", "{\"name\": value, ...}");
  for (const auto& [name, value] : input.extra_variables.items())
    variables.dict->set(name, jinja::Value::from_json(value));
  return jinja::render(*parsed_, variables);
}

ChatTemplateConfig load_chat_template_config(const std::filesystem::path& tokenizer_config, bool template_required) {
  std::filesystem::path path = tokenizer_config;
  if (std::filesystem::is_directory(path)) path /= "tokenizer_config.json";
  ordered_json config;
  try {
    config = ordered_json::parse(read_text_file(path));
  } catch (const ordered_json::parse_error& e) {
    fail_expected(path.string(), str("is not JSON: ", e.what()), "a tokenizer_config.json");
  }
  ChatTemplateConfig result;
  result.bos_token = token_text(config, "bos_token");
  result.eos_token = token_text(config, "eos_token");
  for (const char* key : {"unk_token", "sep_token", "pad_token", "cls_token", "mask_token"})
    if (!token_text(config, key).empty()) result.other_special_tokens[key] = token_text(config, key);
  if (config.contains("additional_special_tokens") && config["additional_special_tokens"].is_array()) {
    ordered_json texts = ordered_json::array();
    for (const auto& token : config["additional_special_tokens"])
      texts.push_back(token.is_string() ? token.get<std::string>() : token.value("content", ""));
    result.other_special_tokens["additional_special_tokens"] = texts;
  }
  const ordered_json* chat_template = config.contains("chat_template") ? &config["chat_template"] : nullptr;
  if ((!chat_template || chat_template->is_null()) && !template_required) return result;
  if (!chat_template || chat_template->is_null())
    fail_expected(path.string(), "has no chat_template", "a chat_template, or --chat-template FILE");
  if (chat_template->is_string()) {
    result.chat_template = chat_template->get<std::string>();
    return result;
  }
  if (chat_template->is_array()) {
    for (const auto& named : *chat_template)
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string()) {
        result.chat_template = named["template"].get<std::string>();
        return result;
      }
    fail_expected(path.string(), "chat_template lists no template named \"default\"",
                  "[{\"name\": \"default\", \"template\": \"...\"}, ...]");
  }
  fail_expected(path.string(), "chat_template is neither a string nor a list", "a Jinja template");
}

std::vector<ChatMessage> parse_conversation(const ordered_json& conversation, const std::string& what) {
  const ordered_json* list = &conversation;
  if (conversation.is_object() && conversation.contains("messages")) list = &conversation["messages"];
  if (!list->is_array()) fail_expected(what, "is not a list of messages", "[{\"role\": ..., \"content\": ...}, ...]");
  std::vector<ChatMessage> messages;
  for (std::size_t i = 0; i < list->size(); ++i) {
    const ordered_json& m = (*list)[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content"))
      fail_expected(str(what, " message ", i), "lacks a string role or a content",
                    "{\"role\": \"user\", \"content\": \"...\"}");
    ChatMessage message{m["role"].get<std::string>(), ""};
    // Content that is not a string (null beside tool_calls, a list of multimodal parts) reaches the
    // template as it is, through other_fields.
    if (m["content"].is_string()) message.content = m["content"].get<std::string>();
    for (const auto& [key, value] : m.items())
      if (key != "role" && !(key == "content" && value.is_string())) message.other_fields[key] = value;
    messages.push_back(std::move(message));
  }
  return messages;
}

CalendarDate parse_calendar_date(const std::string& text) {
  CalendarDate d;
  char trailing = 0;
  if (std::sscanf(text.c_str(), "%4d-%2d-%2d%c", &d.year, &d.month, &d.day, &trailing) != 3 || text.size() != 10 ||
      d.month < 1 || d.month > 12 || d.day < 1 || d.day > 31)
    fail_expected("date", str("'", text, "' is not a date"), "YYYY-MM-DD");
  return d;
}

}  // namespace minitron
