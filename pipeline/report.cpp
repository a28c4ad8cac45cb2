#include "pipeline/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>

#include "eval/results_report.h"
#include "util/checked_json.h"
#include "util/error.h"
#include "util/files.h"

namespace minitron {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string fixed(double v, int digits) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string count(std::int64_t n) {
  char buf[64];
  if (n >= 1000000000)
    std::snprintf(buf, sizeof buf, "%.2fB", static_cast<double>(n) / 1e9);
  else if (n >= 1000000)
    std::snprintf(buf, sizeof buf, "%.2fM", static_cast<double>(n) / 1e6);
  else if (n >= 10000)
    std::snprintf(buf, sizeof buf, "%.1fK", static_cast<double>(n) / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(n));
  return buf;
}

std::string escape_xml(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else if (c == '"')
      out += "&quot;";
    else
      out += c;
  }
  return out;
}

// Validation losses by step from a training run's metrics.jsonl (the last run's, when a
// resumed run appended: later records of a step replace earlier ones).
std::vector<std::pair<double, double>> validation_curve(const fs::path& metrics) {
  std::vector<std::pair<double, double>> points;
  std::ifstream in(metrics);
  std::string line;
  for (std::int64_t line_number = 1; std::getline(in, line); ++line_number) {
    if (line.empty()) continue;
    // A line cut short by an interrupted run is skipped, as are records other than evaluations.
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const JsonField record(j, str(metrics.string(), ":", line_number));
    if (!record.has("validation_loss") || !record.has("step") || record.at("event").exists()) continue;
    const double step = record.at("step").as_float();
    std::erase_if(points, [&](const auto& p) { return p.first == step; });
    points.emplace_back(step, record.at("validation_loss").as_float());
  }
  std::sort(points.begin(), points.end());
  return points;
}

std::optional<JsonField> find_model(const JsonField& results, const std::string& key) {
  for (const JsonField& r : results.as_array())
    if (r.at("key").as_string() == key) return r;
  return std::nullopt;
}

}  // namespace

std::string loss_curves_svg(const std::vector<LossSeries>& series, const std::string& title) {
  constexpr double W = 760, H = 440, left = 64, right = 220, top = 36, bottom = 48;
  double x0 = std::numeric_limits<double>::infinity(), x1 = -x0, y0 = x0, y1 = -x0;
  for (const LossSeries& s : series)
    for (auto [x, y] : s.points) {
      if (!std::isfinite(y)) continue;
      x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    }
  if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  if (x1 == x0) x1 = x0 + 1;
  if (y1 == y0) y1 = y0 + 1;
  const double pad = 0.05 * (y1 - y0);
  y0 -= pad, y1 += pad;
  auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (W - left - right); };
  auto py = [&](double y) { return top + (y1 - y) / (y1 - y0) * (H - top - bottom); };
  static const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                 "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  std::ostringstream o;
  o << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
    << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    << "<text x=\"" << W / 2 - right / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">" << escape_xml(title)
    << "</text>\n"
    << "<line x1=\"" << left << "\" y1=\"" << H - bottom << "\" x2=\"" << W - right << "\" y2=\"" << H - bottom
    << "\" stroke=\"black\"/>\n"
    << "<line x1=\"" << left << "\" y1=\"" << top << "\" x2=\"" << left << "\" y2=\"" << H - bottom
    << "\" stroke=\"black\"/>\n";
  for (int i = 0; i <= 5; ++i) {
    const double x = x0 + (x1 - x0) * i / 5, y = y0 + (y1 - y0) * i / 5;
    o << "<line x1=\"" << px(x) << "\" y1=\"" << H - bottom << "\" x2=\"" << px(x) << "\" y2=\"" << H - bottom + 4
      << "\" stroke=\"black\"/>"
      << "<text x=\"" << px(x) << "\" y=\"" << H - bottom + 18 << "\" text-anchor=\"middle\">" << fixed(x, 0)
      << "</text>\n"
      << "<line x1=\"" << left - 4 << "\" y1=\"" << py(y) << "\" x2=\"" << W - right << "\" y2=\"" << py(y)
      << "\" stroke=\"#e0e0e0\"/>"
      << "<text x=\"" << left - 6 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">" << fixed(y, 2) << "</text>\n";
  }
  o << "<text x=\"" << (left + W - right) / 2 << "\" y=\"" << H - 10
    << "\" text-anchor=\"middle\">optimizer step</text>\n"
    << "<text transform=\"translate(16," << (top + H - bottom) / 2
    << ") rotate(-90)\" text-anchor=\"middle\">validation loss (nats/token)</text>\n";
  for (std::size_t k = 0; k < series.size(); ++k) {
    const char* color = colors[k % (sizeof colors / sizeof colors[0])];
    o << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"2\" points=\"";
    for (auto [x, y] : series[k].points)
      if (std::isfinite(y)) o << px(x) << "," << py(y) << " ";
    o << "\"/>\n";
    const double ly = top + 16 + 18 * static_cast<double>(k);
    o << "<line x1=\"" << W - right + 12 << "\" y1=\"" << ly - 4 << "\" x2=\"" << W - right + 32 << "\" y2=\"" << ly - 4
      << "\" stroke=\"" << color << "\" stroke-width=\"2\"/><text x=\"" << W - right + 38 << "\" y=\"" << ly << "\">"
      << escape_xml(series[k].name) << "</text>\n";
  }
  o << "</svg>\n";
  return o.str();
}

void write_report(const Recipe& recipe, const fs::path& run_dir, const json& results_json) {
  const JsonField results(results_json, (run_dir / "evaluation" / "results.json").string());
  // The task columns are the union of every model's task metrics.
  std::vector<std::string> task_columns;
  for (const JsonField& r : results.as_array())
    for (const auto& [task, _] : r.at("tasks").as_object())
      if (std::find(task_columns.begin(), task_columns.end(), task) == task_columns.end()) task_columns.push_back(task);

  std::ostringstream md;
  md << "# minitron pipeline report" << (recipe.name.empty() ? "" : ": " + recipe.name) << "\n\n"
     << "Validation data: `" << recipe.validation_data << "` ("
     << (recipe.eval_windows > 0 ? std::to_string(recipe.eval_windows) : "all") << " windows of "
     << recipe.sequence_length << " tokens). Loss = mean next-token cross-entropy (nats/token).\n\n"
     << "| model | parameters | validation loss | perplexity | training tokens |";
  for (const std::string& t : task_columns) md << " " << t << " |";
  md << "\n|---|---:|---:|---:|---:|";
  for (std::size_t i = 0; i < task_columns.size(); ++i) md << "---:|";
  md << "\n";
  std::printf("\n%-52s %11s %10s %10s %10s\n", "model", "parameters", "val loss", "perplexity", "tokens");
  for (const JsonField& r : results.as_array()) {
    const std::string& label = r.at("label").as_string();
    const double loss = r.at("validation_loss").as_float(), ppl = r.at("validation_perplexity").as_float();
    const auto params = r.at("parameters").as_int<std::int64_t>(),
               tokens = r.at("training_tokens").as_int<std::int64_t>();
    md << "| " << label << " | " << count(params) << " | " << fixed(loss, 4) << " | " << fixed(ppl, 2) << " | "
       << (tokens ? count(tokens) : "-") << " |";
    std::printf("%-52s %11s %10s %10s %10s", label.c_str(), count(params).c_str(), fixed(loss, 4).c_str(),
                fixed(ppl, 2).c_str(), tokens ? count(tokens).c_str() : "-");
    for (const std::string& t : task_columns) {
      const bool has = r.at("tasks").has(t);
      const std::string score = has ? fixed(r.at("tasks").at(t).as_float(), 4) : "-";
      md << " " << score << " |";
      std::printf("  %s %s", t.c_str(), score.c_str());
    }
    md << "\n";
    std::printf("\n");
  }

  // A suite of harness tasks (evaluation.suite): its table in the paper's layout, one row a model.
  std::vector<std::pair<std::string, std::vector<SuiteCell>>> suite_rows;
  std::string suite_name;
  for (const JsonField& r : results.as_array()) {
    if (!r.has("suite")) continue;
    const JsonField suite = r.at("suite");
    suite_name = suite.at("name").as_string();
    std::vector<SuiteCell> cells;
    for (const JsonField& c : suite.at("cells").as_array())
      cells.push_back({c.at("column").as_string(),
                       c.at("value").is_null() ? std::nullopt : std::optional<double>(c.at("value").as_float())});
    suite_rows.emplace_back(r.at("label").as_string(), std::move(cells));
  }
  if (!suite_rows.empty()) {
    md << "\n## " << suite_name << " (lm-evaluation-harness scores, %)\n\n" << suite_table(suite_rows);
    std::printf("\n%s", suite_table(suite_rows).c_str());
  }

  // The claims the method makes, checked on this run's numbers.
  json findings = json::array();
  auto loss_of = [&](const std::string& key) {
    const std::optional<JsonField> r = find_model(results, key);
    return r ? r->at("validation_loss").as_float() : std::numeric_limits<double>::quiet_NaN();
  };
  md << "\n## Findings\n\n";
  std::printf("\n");
  auto finding = [&](const std::string& claim, double better, double worse, const std::string& better_name,
                     const std::string& worse_name) {
    if (!std::isfinite(better) || !std::isfinite(worse)) return;
    const bool holds = better < worse;
    const std::string text = str(claim, ": ", better_name, " ", fixed(better, 4), holds ? " < " : " >= ", worse_name,
                                 " ", fixed(worse, 4), holds ? " (holds)" : " (does NOT hold)");
    md << "- " << text << "\n";
    std::printf("%s\n", text.c_str());
    findings.push_back({{"claim", claim}, {"holds", holds}, {better_name, better}, {worse_name, worse}});
  };
  finding("teacher correction helps on the distillation data", loss_of("corrected"), loss_of("teacher"), "corrected",
          "original");
  for (const RecipeStudent& s : recipe.students) {
    finding(str(s.name, ": distillation recovers the pruned model"), loss_of("distilled-" + s.name),
            loss_of("pruned-" + s.name), "distilled", "pruned");
    finding(str(s.name, ": distilled beats the same architecture from scratch on the same tokens"),
            loss_of("distilled-" + s.name), loss_of("baseline-" + s.name), "distilled", "scratch");
  }

  // Loss curves of every training run, from their metrics.jsonl.
  std::vector<LossSeries> series;
  auto add_series = [&](const std::string& name, const fs::path& dir) {
    if (!fs::exists(dir / "metrics.jsonl")) return;
    LossSeries s{name, validation_curve(dir / "metrics.jsonl")};
    if (!s.points.empty()) series.push_back(std::move(s));
  };
  add_series("teacher correction", run_dir / "01-correct");
  for (const RecipeStudent& s : recipe.students) {
    add_series(s.name + " distilled", run_dir / str("04-distill-", s.name));
    add_series(s.name + " from scratch", run_dir / str("05-baseline-", s.name));
  }
  write_bytes_atomically(run_dir / "loss_curves.svg", loss_curves_svg(series, "validation loss during training"));
  md << "\n![validation loss curves](loss_curves.svg)\n";
  write_bytes_atomically(run_dir / "report.md", md.str());
  write_bytes_atomically(
      run_dir / "report.json",
      json{{"recipe", recipe.name}, {"models", results_json}, {"findings", findings}}.dump(2) + "\n");
  std::printf("\nreport: %s, %s, %s\n", (run_dir / "report.md").c_str(), (run_dir / "report.json").c_str(),
              (run_dir / "loss_curves.svg").c_str());
}

}  // namespace minitron
