#include "eval/results_report.h"

#include <cmath>
#include <cstdio>

#include "util/error.h"

namespace minitron {

namespace {

nlohmann::ordered_json number_or_na(double v) {
  return std::isnan(v) ? nlohmann::ordered_json("N/A") : nlohmann::ordered_json(v);
}

// versions: the mmlu group's _mmlu.yaml says 2, each subject's _default_template_yaml 1.0.
double row_version(TaskKind kind, const std::string& row_task) {
  if (kind == TaskKind::Mmlu && row_task == "mmlu") return 2.0;
  return task_version(kind);
}

const MetricRow* find_row(const TaskRunResult& result, const std::string& task, const std::string& metric,
                          const std::string& filter) {
  for (const MetricRow& row : result.rows)
    if (row.task == task && row.metric == metric && row.filter == filter) return &row;
  return nullptr;
}

}  // namespace

nlohmann::ordered_json harness_results_json(std::span<const TaskReport> reports, const nlohmann::ordered_json& config) {
  nlohmann::ordered_json results = nlohmann::ordered_json::object(), nshot = nlohmann::ordered_json::object(),
                         versions = nlohmann::ordered_json::object(), better = nlohmann::ordered_json::object(),
                         samples = nlohmann::ordered_json::object(), at_limit = nlohmann::ordered_json::object();
  for (const TaskReport& report : reports) {
    const std::string name = task_kind_name(report.kind);
    for (const MetricRow& row : report.result.rows) {
      nlohmann::ordered_json& entry = results[row.task];
      if (!entry.contains("alias")) entry["alias"] = row.task;
      entry[row.metric + "," + row.filter] = row.value;
      entry[row.metric + "_stderr," + row.filter] = number_or_na(row.stderr_value);
      nshot[row.task] = report.shots;
      versions[row.task] = row_version(report.kind, row.task);
      better[row.task][row.metric] = true;
    }
    const std::int64_t effective = static_cast<std::int64_t>(
        task_is_generative(report.kind) ? report.result.generation_scores.size() : report.result.questions.size());
    samples[name] = {{"original", report.documents}, {"effective", effective}};
    if (task_is_generative(report.kind)) at_limit[name] = report.result.generations_at_limit;
  }
  nlohmann::ordered_json out = {{"results", results},         {"n-shot", nshot},      {"versions", versions},
                                {"higher_is_better", better}, {"n-samples", samples}, {"config", config}};
  if (!at_limit.empty()) out["generations_at_length_limit"] = at_limit;
  return out;
}

const std::vector<SuiteTask>& suite_tasks(const std::string& name) {
  static const std::vector<SuiteTask> minitron_base = {
      {TaskKind::Winogrande, 5, "winogrande_validation.jsonl", "winogrande_train.jsonl", "Winogrande (5)", "acc",
       "none"},
      {TaskKind::ArcChallenge, 25, "arc_challenge_test.jsonl", "arc_challenge_train.jsonl", "ARC Challenge (25)",
       "acc_norm", "none"},
      {TaskKind::Mmlu, 5, "mmlu_test.jsonl", "mmlu_dev.jsonl", "MMLU (5)", "acc", "none"},
      {TaskKind::HellaSwag, 10, "hellaswag_validation.jsonl", "hellaswag_train.jsonl", "HellaSwag (10)", "acc_norm",
       "none"},
      {TaskKind::Gsm8k, 5, "gsm8k_test.jsonl", "gsm8k_train.jsonl", "GSM8K (5)", "exact_match", "strict-match"},
      {TaskKind::TruthfulQaMc2, 0, "truthfulqa_mc_validation.jsonl", nullptr, "TruthfulQA (0)", "acc", "none"},
  };
  if (name == "minitron-base") return minitron_base;
  fail_expected("--suite", str("'", name, "' is not a known suite"), suite_names());
}

const char* suite_names() { return "minitron-base"; }

void check_suite_files(const std::string& name, const std::filesystem::path& task_dir) {
  for (const SuiteTask& t : suite_tasks(name))
    for (const char* file : {t.task_file, t.fewshot_file})
      if (file && !std::filesystem::is_regular_file(task_dir / file))
        fail_expected("--task-dir", str((task_dir / file).string(), " does not exist"),
                      str("the suite's files exported as eval/README.md shows (", task_kind_name(t.kind), ")"));
}

std::vector<SuiteCell> suite_cells(const std::string& name, std::span<const TaskReport> reports) {
  std::vector<SuiteCell> cells;
  for (const SuiteTask& t : suite_tasks(name)) {
    SuiteCell cell{t.column, std::nullopt};
    for (const TaskReport& r : reports)
      if (r.kind == t.kind)
        if (const MetricRow* row = find_row(r.result, task_kind_name(t.kind), t.metric, t.filter))
          cell.value = row->value;
    cells.push_back(cell);
  }
  return cells;
}

std::string suite_table(const std::vector<std::pair<std::string, std::vector<SuiteCell>>>& rows) {
  if (rows.empty()) return {};
  std::string table = "| Model |";
  for (const SuiteCell& c : rows.front().second) table += str(" ", c.column, " |");
  table += "\n|---|";
  for (std::size_t i = 0; i < rows.front().second.size(); ++i) table += "---|";
  table += "\n";
  for (const auto& [model, cells] : rows) {
    table += "| " + model + " |";
    for (const SuiteCell& c : cells) {
      char cell[32] = "-";
      if (c.value) std::snprintf(cell, sizeof cell, "%.1f", 100.0 * *c.value);
      table += str(" ", cell, " |");
    }
    table += "\n";
  }
  return table;
}

}  // namespace minitron
