// The pipeline's final report: a table (stdout, report.md, report.json) comparing the teacher,
// the corrected teacher, each pruned student before and after distillation and the
// from-scratch baseline, plus loss_curves.svg drawn from the runs' metrics.jsonl.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pipeline/recipe.h"

namespace minitron {

struct ReportModel {
  std::string key;    // "teacher", "corrected", "pruned-width", "distilled-width", "baseline-width"
  std::string label;  // for humans
  std::filesystem::path dir;
  std::int64_t training_tokens = 0;  // tokens of the step that produced it (0: none)
};

// results: the evaluate step's results.json (one object per model, in report order).
void write_report(const Recipe& recipe, const std::filesystem::path& run_dir, const nlohmann::json& results);

// A hand-written SVG line chart: one polyline per series (x = step, y = loss), axes, ticks and
// a legend. Exposed for tests.
struct LossSeries {
  std::string name;
  std::vector<std::pair<double, double>> points;
};
std::string loss_curves_svg(const std::vector<LossSeries>& series, const std::string& title);

}  // namespace minitron
