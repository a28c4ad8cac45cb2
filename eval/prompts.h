// The prompt of one evaluated document, as lm-evaluation-harness v0.4 builds it: the plain text
// (description, few-shot examples, question), or with --apply-chat-template the conversation the
// checkpoint's chat template renders.
//
// Harness sources: lm_eval/api/task.py ConfigurableTask.fewshot_context, append_target_question
// and construct_requests; lm_eval/api/samplers.py ContextSampler.get_context / get_chat_context;
// lm_eval/models/huggingface.py HFLM.apply_chat_template.
//  - system prompt: system_instruction + fewshot_delimiter ("\n\n") + description when both are
//    set, else whichever is set. Plain text: it starts the prompt. Chat: a "system" message.
//  - few-shot examples (when shots > 0): plain text: "<question> <answer>\n\n" each. Chat with
//    fewshot_as_multiturn: a user turn (the question) and an assistant turn (the answer) each;
//    without: the plain-text examples as one user message.
//  - the question: plain text: appended. Chat: a new user message when fewshot_as_multiturn, when
//    there are no messages or the last is the system message; otherwise appended to the last
//    user message. Rendered with add_generation_prompt=True.
//  - multiple choice with a chat template: the continuation is the choice with no target
//    delimiter (" " becomes ""), so it follows the generation prompt directly.
//  - winogrande (multiple inputs): the few-shot conversation is rendered on its own (nothing when
//    empty), and each option's context is that + the rendering of [{"user": <context>}].
//  - a rendering that fails (the template's raise_exception, e.g. a template without a system
//    role) is retried without the system message, as HFLM.apply_chat_template does.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "eval/tasks.h"

namespace minitron {

struct PromptFormat {
  std::optional<std::string> system_instruction;  // --system-instruction
  const ChatTemplate* chat_template = nullptr;    // set: --apply-chat-template
  // bos_token, eos_token, extra_variables and today for the template; its messages and
  // add_generation_prompt are set per prompt.
  ChatTemplateInput chat_variables;
  bool fewshot_as_multiturn = false;
};

// The scored requests of a multiple-choice document. `shots` is the task's few-shot count (the
// harness adds the few-shot block whenever it is > 0), `examples` the documents drawn for it.
Question build_prompted_question(TaskKind kind, const TaskDoc& doc, const std::vector<const TaskDoc*>& examples,
                                 std::int64_t shots, const PromptFormat& format);

// The context a generative task (gsm8k) continues.
std::string build_generation_prompt(TaskKind kind, const TaskDoc& doc, const std::vector<const TaskDoc*>& examples,
                                    std::int64_t shots, const PromptFormat& format);

}  // namespace minitron
