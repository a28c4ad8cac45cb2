// One line of an evaluation task's JSONL, read as every task layout: any bytes are a document
// (with a gold index among its choices) or a minitron::Error.
#include "eval/tasks.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace minitron;
  const std::string line(fuzz::as_text(data, size));
  for (TaskKind kind : {TaskKind::HellaSwag, TaskKind::Winogrande, TaskKind::Mmlu, TaskKind::ArcEasy,
                        TaskKind::ArcChallenge, TaskKind::MultipleChoice}) {
    fuzz::expect_value_or_error([&] {
      const TaskDoc doc = parse_task_doc(kind, line, "task.jsonl:1");
      if (doc.gold < 0 || doc.gold >= static_cast<int>(doc.choices.size())) fail("gold index outside the choices");
      (void)build_question(kind, doc, fewshot_prefix(kind, doc.subject, {&doc}));
    });
  }
  return 0;
}
