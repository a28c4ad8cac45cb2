// Prompts with --system-instruction, --apply-chat-template and --fewshot-as-multiturn, against
// strings written by hand from lm_eval/api/task.py fewshot_context / append_target_question /
// construct_requests and lm_eval/api/samplers.py get_context / get_chat_context (v0.4), rendered
// by small templates whose output is plain to read.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "eval/prompts.h"
#include "eval/tasks.h"
#include "util/error.h"

namespace minitron {
namespace {

std::filesystem::path data(const std::string& name) {
  return std::filesystem::path(MINITRON_SOURCE_DIR) / "tests/eval/data" / name;
}

const char* kTemplate =
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}";
// A template without a system role, as some checkpoints ship (Gemma's, Mistral's older ones).
const char* kNoSystemTemplate =
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
    "[{{ m['role'] }}]{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}";

struct ChatFormat {
  ChatTemplate tmpl;
  PromptFormat format;
  explicit ChatFormat(const char* text, bool multiturn = false) : tmpl(text) {
    format.chat_template = &tmpl;
    format.chat_variables.bos_token = "<s>";
    format.fewshot_as_multiturn = multiturn;
  }
};

class ChatPrompts : public ::testing::Test {
 protected:
  std::vector<TaskDoc> arc = load_task_file(TaskKind::ArcEasy, data("arc_easy.jsonl"));
  std::vector<const TaskDoc*> arc_shots{&arc[0], &arc[2]};
};

TEST_F(ChatPrompts, FewshotAsOneUserMessageAndTheChoiceAfterTheGenerationPrompt) {
  ChatFormat chat(kTemplate);
  const Question q = build_prompted_question(TaskKind::ArcEasy, arc[1], arc_shots, 2, chat.format);
  ASSERT_EQ(q.requests.size(), 3u);
  EXPECT_EQ(q.requests[0].context,
            "<s><|user|>Question: Which of these is a liquid?\nAnswer: water\n\n"
            "Question: Which animal can fly?\nAnswer: a bird\n\n"
            "Question: What makes a shadow?\nAnswer:<|end|><|assistant|>");
  EXPECT_EQ(q.requests[0].continuation, "light blocked by an object");  // target_delimiter "" with a template
  EXPECT_EQ(q.choice_lengths, (std::vector<std::int64_t>{26, 5, 4}));   // acc_norm still divides by len(choice)
}

TEST_F(ChatPrompts, MultiturnWithASystemInstruction) {
  ChatFormat chat(kTemplate, /*multiturn=*/true);
  chat.format.system_instruction = "Be brief.";
  const Question q = build_prompted_question(TaskKind::ArcEasy, arc[1], arc_shots, 2, chat.format);
  EXPECT_EQ(q.requests[2].context,
            "<s><|system|>Be brief.<|end|>"
            "<|user|>Question: Which of these is a liquid?\nAnswer:<|end|><|assistant|>water<|end|>"
            "<|user|>Question: Which animal can fly?\nAnswer:<|end|><|assistant|>a bird<|end|>"
            "<|user|>Question: What makes a shadow?\nAnswer:<|end|><|assistant|>");
}

TEST_F(ChatPrompts, MmluDescriptionIsTheSystemMessage) {
  const auto test = load_task_file(TaskKind::Mmlu, data("mmlu_test.jsonl"));
  ChatFormat chat(kTemplate);
  Question q = build_prompted_question(TaskKind::Mmlu, test[1], {}, 0, chat.format);
  EXPECT_EQ(q.requests[1].context,
            "<s><|system|>The following are multiple choice questions (with answers) about high school biology.\n\n"
            "<|end|><|user|>Which organ pumps blood?\nA. the lung\nB. the heart\nC. the skin\nD. the bone\n"
            "Answer:<|end|><|assistant|>");
  EXPECT_EQ(q.requests[1].continuation, "B");
  chat.format.system_instruction = "Be brief.";
  q = build_prompted_question(TaskKind::Mmlu, test[1], {}, 0, chat.format);
  EXPECT_EQ(q.requests[0].context.substr(0, 45), "<s><|system|>Be brief.\n\nThe following are mul");
}

TEST(PlainPrompts, SystemInstructionStartsThePromptAsTheHarnessJoinsIt) {
  const auto arc = load_task_file(TaskKind::ArcEasy, data("arc_easy.jsonl"));
  PromptFormat plain;
  plain.system_instruction = "Be brief.";
  // labeled_examples = system_prompt; labeled_examples += get_context(...): no delimiter.
  const Question q = build_prompted_question(TaskKind::ArcEasy, arc[1], {&arc[0]}, 1, plain);
  EXPECT_EQ(q.requests[0].context,
            "Be brief.Question: Which of these is a liquid?\nAnswer: water\n\nQuestion: What makes a shadow?\nAnswer:");
  EXPECT_EQ(q.requests[0].continuation, " light blocked by an object");
  const auto mmlu = load_task_file(TaskKind::Mmlu, data("mmlu_test.jsonl"));
  const Question m = build_prompted_question(TaskKind::Mmlu, mmlu[1], {}, 0, plain);
  EXPECT_EQ(m.requests[0].context.substr(0, 30), "Be brief.\n\nThe following are m");
}

// Winogrande has multiple inputs: the few-shot conversation rendered alone, then each option's
// context rendered as its own one-message conversation; the continuation without its space.
TEST(ChatPromptsWinogrande, EachOptionRenderedAfterTheFewshotConversation) {
  const auto docs = load_task_file(TaskKind::Winogrande, data("winogrande.jsonl"));
  ChatFormat chat(kTemplate);
  Question q = build_prompted_question(TaskKind::Winogrande, docs[2], {&docs[0]}, 1, chat.format);
  ASSERT_EQ(q.requests.size(), 2u);
  EXPECT_EQ(q.requests[1].context,
            "<s><|user|>The cup did not fit in the bag because the cup was too big.\n\n<|end|><|assistant|>"
            "<s><|user|>The dog chased the cat, so the cat<|end|><|assistant|>");
  EXPECT_EQ(q.requests[1].continuation, "ran up the tree.");
  q = build_prompted_question(TaskKind::Winogrande, docs[2], {}, 0, chat.format);
  EXPECT_EQ(q.requests[0].context, "<s><|user|>The dog chased the cat, so the dog<|end|><|assistant|>");
}

TEST(ChatPromptsGsm8k, MultiturnAnswersAreAssistantTurns) {
  const auto test = load_task_file(TaskKind::Gsm8k, data("gsm8k.jsonl"));
  const auto train = load_task_file(TaskKind::Gsm8k, data("gsm8k_train.jsonl"));
  ChatFormat chat(kTemplate, /*multiturn=*/true);
  EXPECT_EQ(build_generation_prompt(TaskKind::Gsm8k, test[1], {&train[2]}, 1, chat.format),
            "<s><|user|>Question: Bo reads 10 pages a day. Pages in 3 days?\nAnswer:<|end|>"
            "<|assistant|>10 * 3 = <<10*3=30>>30\n#### 30<|end|>"
            "<|user|>Question: A box holds 7 pens. How many pens are in 1 box?\nAnswer:<|end|><|assistant|>");
}

// HFLM.apply_chat_template: a TemplateError drops the system messages and renders again.
TEST(ChatPromptsFallback, ATemplateWithoutASystemRoleDropsTheSystemMessage) {
  const auto arc = load_task_file(TaskKind::ArcEasy, data("arc_easy.jsonl"));
  ChatFormat chat(kNoSystemTemplate);
  chat.format.system_instruction = "Be brief.";
  const Question q = build_prompted_question(TaskKind::ArcEasy, arc[1], {}, 0, chat.format);
  EXPECT_EQ(q.requests[0].context, "[user]Question: What makes a shadow?\nAnswer:[assistant]");
  // A failure with no system message to drop is the template's error, as it stands.
  ChatFormat broken("{{ raise_exception('always') }}");
  EXPECT_THROW(build_prompted_question(TaskKind::ArcEasy, arc[1], {}, 0, broken.format), Error);
}

}  // namespace
}  // namespace minitron
