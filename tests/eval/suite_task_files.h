// Shared by the suite tests of `minitron eval` (test_eval_generation_cli.cpp) and `minitron
// pipeline` (test_pipeline_tasks.cpp): a task directory for the minitron-base suite, in the Hugging
// Face datasets' field names, with enough training documents for the paper's shot counts
// (Winogrande 5, ARC-Challenge 25, MMLU 5, HellaSwag 10, GSM8K 5) and three test documents each.
// GSM8K's test answers are 42, 41, 40 for a question ("Sum?") a model can only guess.
#pragma once

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "util/error.h"

namespace minitron::test {

inline void write_suite_task_files(const std::filesystem::path& tasks, const std::filesystem::path& source_dir) {
  using nlohmann::json;
  std::filesystem::create_directories(tasks);
  auto lines = [&](const std::string& name, int n, const std::function<json(int)>& doc) {
    std::ofstream out(tasks / name);
    for (int i = 0; i < n; ++i) out << doc(i).dump() << "\n";
  };
  auto wino = [](int i) {
    return json{{"sentence", str("Ann gave Bo a pen because _ had ", i, " pens.")},
                {"option1", "Ann"},
                {"option2", "Bo"},
                {"answer", i % 2 ? "1" : "2"}};
  };
  auto arc = [](int i) {
    return json{{"question", str("What is ", i, "?")},
                {"choices", {{"text", {"a", "b", "c"}}, {"label", {"A", "B", "C"}}}},
                {"answerKey", "B"}};
  };
  auto mmlu = [](int i) {
    return json{
        {"question", str("Pick ", i)}, {"choices", {"w", "x", "y", "z"}}, {"answer", i % 4}, {"subject", "math"}};
  };
  auto hella = [](int i) {
    return json{{"activity_label", "Cooking"},
                {"ctx_a", str("Step ", i, ".")},
                {"ctx_b", "then"},
                {"endings", {"a", "b", "c", "d"}},
                {"label", "1"}};
  };
  auto gsm = [](int i) { return json{{"question", str("What is ", i, " + 0?")}, {"answer", str("#### ", i)}}; };
  lines("winogrande_validation.jsonl", 3, wino);
  lines("winogrande_train.jsonl", 6, wino);
  lines("arc_challenge_test.jsonl", 3, arc);
  lines("arc_challenge_train.jsonl", 25, arc);
  lines("mmlu_test.jsonl", 3, mmlu);
  lines("mmlu_dev.jsonl", 5, mmlu);
  lines("hellaswag_validation.jsonl", 3, hella);
  lines("hellaswag_train.jsonl", 11, hella);
  lines("gsm8k_test.jsonl", 3, [](int i) { return json{{"question", "Sum?"}, {"answer", str("#### ", 42 - i)}}; });
  lines("gsm8k_train.jsonl", 5, gsm);
  std::filesystem::copy_file(source_dir / "tests/eval/data/truthfulqa_mc.jsonl",
                             tasks / "truthfulqa_mc_validation.jsonl");
}

}  // namespace minitron::test
