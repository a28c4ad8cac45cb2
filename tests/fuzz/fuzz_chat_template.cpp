// A chat template from an untrusted tokenizer_config.json, rendered on a conversation: any bytes
// are a rendered prompt or a minitron::Error (a syntax error, an unsupported construct, a failed
// render, the template's own raise_exception). The input is the template text, optionally followed
// by a line "=== conversation ===" and the conversation as JSON (what `minitron tokenizer chat
// --conversation` reads); without one, a fixed conversation with a system, user and assistant turn.
#include <nlohmann/json.hpp>

#include "data/chat_template.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  const std::string_view input = fuzz::as_text(data, size);
  constexpr std::string_view separator = "\n=== conversation ===\n";
  const std::size_t split = input.find(separator);
  const std::string template_text(input.substr(0, split));
  std::vector<ChatMessage> messages = {
      {"system", "Be brief."}, {"user", "What is 2 + 2?"}, {"assistant", "4"}, {"user", "And 3 + 3?"}};
  if (split != std::string_view::npos) {
    const auto conversation = nlohmann::ordered_json::parse(input.substr(split + separator.size()), nullptr, false);
    if (conversation.is_discarded()) return 0;
    bool parsed = false;
    fuzz::expect_value_or_error([&] {
      messages = parse_conversation(conversation, "conversation");
      parsed = true;
    });
    if (!parsed) return 0;
  }
  fuzz::expect_value_or_error([&] {
    const ChatTemplate chat_template(template_text);
    for (const bool add_generation_prompt : {false, true}) {
      ChatTemplateInput request;
      request.messages = messages;
      request.add_generation_prompt = add_generation_prompt;
      request.bos_token = "<s>";
      request.eos_token = "</s>";
      request.today = CalendarDate{2024, 7, 26};
      fuzz::expect_value_or_error([&] { (void)chat_template.render(request); });
    }
  });
  return 0;
}
