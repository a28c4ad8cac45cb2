// One line of an evaluation task's JSONL, read as every task layout: any bytes are a document
// (with a gold index among its choices; gsm8k: a prompt) or a minitron::Error.
#include "eval/tasks.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  const std::string line(fuzz::as_text(data, size));
  for (TaskKind kind : {TaskKind::HellaSwag, TaskKind::Winogrande, TaskKind::Mmlu, TaskKind::ArcEasy,
                        TaskKind::ArcChallenge, TaskKind::MultipleChoice, TaskKind::Gsm8k, TaskKind::Gsm8kCot,
                        TaskKind::TruthfulQaMc1, TaskKind::TruthfulQaMc2}) {
    fuzz::expect_value_or_error([&] {
      const TaskDoc doc = parse_task_doc(kind, line, "task.jsonl:1");
      if (task_is_generative(kind)) {
        (void)(fewshot_prefix(kind, doc.subject, {&doc}) + doc.query);  // the plain-text prompt
        return;
      }
      if (doc.gold < 0 || doc.gold >= static_cast<int>(doc.choices.size())) fail("gold index outside the choices");
      if (doc.true_count < 0 || doc.true_count > static_cast<std::int64_t>(doc.choices.size()))
        fail("true answers outside the choices");
      (void)build_question(kind, doc, fewshot_prefix(kind, doc.subject, {&doc}));
    });
  }
  return 0;
}
