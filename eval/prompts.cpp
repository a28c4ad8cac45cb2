#include "eval/prompts.h"

#include <algorithm>

#include "util/error.h"

namespace minitron {

namespace {

constexpr const char* kFewshotDelimiter = "\n\n";

std::string system_prompt(TaskKind kind, const TaskDoc& doc, const PromptFormat& format) {
  const std::string description = task_description(kind, doc.subject);
  if (format.system_instruction && !description.empty())
    return *format.system_instruction + kFewshotDelimiter + description;
  if (format.system_instruction) return *format.system_instruction;
  return description;
}

std::string plain_examples(TaskKind kind, const std::vector<const TaskDoc*>& examples) {
  std::string text;
  for (const TaskDoc* d : examples) text += fewshot_example(kind, *d) + kFewshotDelimiter;
  return text;
}

// HFLM.apply_chat_template with add_generation_prompt=True: on a template error, once more
// without the system messages.
std::string render(const PromptFormat& format, const std::vector<ChatMessage>& messages) {
  ChatTemplateInput input = format.chat_variables;
  input.messages = messages;
  input.add_generation_prompt = true;
  try {
    return format.chat_template->render(input);
  } catch (const Error&) {
    const bool has_system =
        std::any_of(messages.begin(), messages.end(), [](const ChatMessage& m) { return m.role == "system"; });
    if (!has_system) throw;
    input.messages.clear();
    for (const ChatMessage& m : messages)
      if (m.role != "system") input.messages.push_back(m);
    return format.chat_template->render(input);
  }
}

// The system message and the few-shot turns (fewshot_context before the question).
std::vector<ChatMessage> chat_history(TaskKind kind, const TaskDoc& doc, const std::vector<const TaskDoc*>& examples,
                                      std::int64_t shots, const PromptFormat& format) {
  std::vector<ChatMessage> messages;
  if (const std::string system = system_prompt(kind, doc, format); !system.empty())
    messages.push_back({"system", system});
  if (shots > 0) {
    if (format.fewshot_as_multiturn) {
      for (const TaskDoc* d : examples) {
        messages.push_back({"user", fewshot_question(kind, *d)});
        messages.push_back({"assistant", fewshot_answer(kind, *d)});
      }
    } else {
      messages.push_back({"user", plain_examples(kind, examples)});
    }
  }
  return messages;
}

// append_target_question.
void append_question(std::vector<ChatMessage>& messages, const std::string& question, bool multiturn) {
  if (!multiturn && !messages.empty() && messages.back().role != "system")
    messages.back().content += question;
  else
    messages.push_back({"user", question});
}

}  // namespace

Question build_prompted_question(TaskKind kind, const TaskDoc& doc, const std::vector<const TaskDoc*>& examples,
                                 std::int64_t shots, const PromptFormat& format) {
  MINITRON_ASSERT(!task_is_generative(kind), task_kind_name(kind), " is not a multiple-choice task");
  if (!format.chat_template)
    return build_question(kind, doc, system_prompt(kind, doc, format) + plain_examples(kind, examples));
  std::vector<ChatMessage> messages = chat_history(kind, doc, examples, shots, format);
  Question q;
  q.gold = doc.gold;
  q.subject = doc.subject;
  if (kind == TaskKind::Winogrande) {
    const std::string history = messages.empty() ? std::string() : render(format, messages);
    for (const std::string& option : doc.choices) {
      q.requests.push_back({history + render(format, {{"user", doc.query + option}}), doc.target});
      q.choice_lengths.push_back(utf8_length(option));
    }
    return q;
  }
  append_question(messages, doc.query, format.fewshot_as_multiturn);
  const std::string context = render(format, messages);
  for (const std::string& choice : doc.choices) {
    q.requests.push_back({context, choice});
    q.choice_lengths.push_back(utf8_length(choice));
  }
  return q;
}

std::string build_generation_prompt(TaskKind kind, const TaskDoc& doc, const std::vector<const TaskDoc*>& examples,
                                    std::int64_t shots, const PromptFormat& format) {
  MINITRON_ASSERT(task_is_generative(kind), task_kind_name(kind), " is not a generative task");
  if (!format.chat_template) return system_prompt(kind, doc, format) + plain_examples(kind, examples) + doc.query;
  std::vector<ChatMessage> messages = chat_history(kind, doc, examples, shots, format);
  append_question(messages, doc.query, format.fewshot_as_multiturn);
  return render(format, messages);
}

}  // namespace minitron
