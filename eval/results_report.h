// What an evaluation prints and writes: lm-evaluation-harness's results JSON (so minitron's
// numbers sit beside published lm_eval runs), the suites of tasks a paper reports, and their
// table in the paper's layout.
//
// The results JSON follows lm_eval/evaluator.py's output (v0.4): "results" maps each task (and
// every mmlu subject, and the "mmlu" group) to {"alias", "<metric>,<filter>": value,
// "<metric>_stderr,<filter>": stderr or "N/A" (one document)}; "n-shot" and "versions" per task;
// "higher_is_better"; "n-samples" {"original", "effective"} per task; "config". minitron adds
// "generations_at_length_limit" per generative task.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/run_task.h"
#include "eval/tasks.h"

namespace minitron {

struct TaskReport {
  TaskKind kind = TaskKind::MultipleChoice;
  std::int64_t shots = 0;
  std::int64_t documents = 0;  // in the task file (n-samples "original")
  TaskRunResult result;
};

// `config`: the run's settings, written under "config".
nlohmann::ordered_json harness_results_json(std::span<const TaskReport> reports, const nlohmann::ordered_json& config);

// One task of a suite: the files it reads from --task-dir and the number the table shows.
struct SuiteTask {
  TaskKind kind;
  std::int64_t shots;
  const char* task_file;     // in --task-dir
  const char* fewshot_file;  // in --task-dir; nullptr: 0-shot
  const char* column;        // the table's column header
  const char* metric;
  const char* filter;
};

// "minitron-base": the base-model table of the Minitron papers (arXiv 2407.14679, 2408.11796):
// Winogrande 5-shot (acc), ARC-Challenge 25 (acc_norm), MMLU 5 (acc), HellaSwag 10 (acc_norm),
// GSM8K 5 (exact_match, strict-match), TruthfulQA 0 (truthfulqa_mc2 acc).
const std::vector<SuiteTask>& suite_tasks(const std::string& name);
// The names suite_tasks accepts, for errors and help.
const char* suite_names();

// Fails naming the first of the suite's files missing from `task_dir` (before any model loads).
void check_suite_files(const std::string& name, const std::filesystem::path& task_dir);

// One model's row of a suite's table: the column headers and the values (nullopt: not run).
struct SuiteCell {
  std::string column;
  std::optional<double> value;
};
std::vector<SuiteCell> suite_cells(const std::string& name, std::span<const TaskReport> reports);

// A Markdown table in the paper's layout: one row per (model, cells), one column per suite task,
// the values in percent with one decimal as the papers print them.
std::string suite_table(const std::vector<std::pair<std::string, std::vector<SuiteCell>>>& rows);

}  // namespace minitron
