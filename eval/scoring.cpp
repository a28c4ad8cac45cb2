#include "eval/scoring.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "eval/answer_extraction.h"
#include "util/error.h"

namespace minitron {

std::optional<std::int32_t> prefix_token_id(const Tokenizer& tokenizer) {
  return tokenizer.bos_id() ? tokenizer.bos_id() : tokenizer.eos_id();
}

EncodedRequest encode_request(const Tokenizer& tokenizer, const ChoiceRequest& request, const EncodeOptions& options) {
  EncodedRequest out;
  if (request.context.empty()) {
    if (!options.prefix_token)
      fail_expected("scoring", "a request has an empty context and the tokenizer has neither BOS nor EOS",
                    "a non-empty context, or a tokenizer with a BOS or EOS token");
    out.context = {*options.prefix_token};
    out.continuation = tokenizer.encode(request.continuation, options.add_special_tokens);
    return out;
  }
  std::string context = request.context, continuation = request.continuation;
  std::size_t end = context.size();
  // Python's rstrip(): trailing whitespace joins the continuation.
  while (end > 0 && (context[end - 1] == ' ' || context[end - 1] == '\t' || context[end - 1] == '\n' ||
                     context[end - 1] == '\r' || context[end - 1] == '\v' || context[end - 1] == '\f'))
    --end;
  continuation = context.substr(end) + continuation;
  context.resize(end);
  const std::vector<std::int32_t> whole = tokenizer.encode(context + continuation, options.add_special_tokens);
  out.context = tokenizer.encode(context, options.add_special_tokens);
  if (out.context.empty()) {
    // A whitespace-only context (" ", "\n") encodes to nothing once its whitespace has moved
    // to the continuation; the harness asserts len(context_enc) > 0 here. Score it like an empty
    // context: [prefix_token] + the whole (moved-whitespace) continuation.
    if (!options.prefix_token)
      fail_expected("scoring",
                    "a whitespace-only context encodes to no tokens and the tokenizer has neither BOS nor EOS",
                    "a context with non-whitespace text, or a tokenizer with a BOS or EOS token");
    out.context = {*options.prefix_token};
    out.continuation = whole;
    return out;
  }
  const std::size_t n = std::min(out.context.size(), whole.size());
  out.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(n), whole.end());
  return out;
}

ScoringWindow scoring_window(const EncodedRequest& request, std::int64_t max_length) {
  const std::int64_t contlen = static_cast<std::int64_t>(request.continuation.size());
  if (contlen == 0) fail_expected("scoring", "a continuation encodes to no tokens", "at least one continuation token");
  if (contlen > max_length)
    fail_expected("scoring", str("a continuation of ", contlen, " tokens"),
                  str("at most the model's maximum length ", max_length));
  std::vector<std::int32_t> full = request.context;
  full.insert(full.end(), request.continuation.begin(), request.continuation.end());
  const std::size_t keep = std::min<std::size_t>(full.size(), static_cast<std::size_t>(max_length) + 1);
  full.erase(full.begin(), full.end() - static_cast<std::ptrdiff_t>(keep));
  // encode_request never leaves the context empty ([prefix_token] stands in), so the inputs
  // hold at least contlen positions; without that the first scored position would wrap.
  MINITRON_ASSERT(!request.context.empty() && full.size() >= static_cast<std::size_t>(contlen) + 1,
                  "scoring window: ", request.context.size(), " context and ", contlen,
                  " continuation tokens leave no position to predict the first continuation token");
  ScoringWindow w;
  w.inputs.assign(full.begin(), full.end() - 1);
  w.targets.assign(w.inputs.size(), -1);
  const std::size_t first = w.inputs.size() - static_cast<std::size_t>(contlen);
  for (std::size_t p = first; p < w.inputs.size(); ++p) w.targets[p] = full[p + 1];
  return w;
}

std::vector<double> score_batch(LlamaModel& model, LossWorkspace& workspace, std::span<const ScoringWindow> windows,
                                const ForwardOptions& forward) {
  const std::int64_t B = static_cast<std::int64_t>(windows.size());
  MINITRON_ASSERT(B > 0 && B <= model.max_batch(), "batch of ", B, " requests, model built for ", model.max_batch());
  std::int64_t T = 0;
  for (const ScoringWindow& w : windows) T = std::max<std::int64_t>(T, static_cast<std::int64_t>(w.inputs.size()));
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(B * T), 0), targets(static_cast<std::size_t>(B * T), -1);
  for (std::int64_t b = 0; b < B; ++b) {
    const ScoringWindow& w = windows[static_cast<std::size_t>(b)];
    std::copy(w.inputs.begin(), w.inputs.end(), tokens.begin() + b * T);
    std::copy(w.targets.begin(), w.targets.end(), targets.begin() + b * T);
  }
  model.forward(tokens, B, T, forward);
  std::vector<float> per_row;
  cross_entropy_loss(model, targets, workspace, 0.0f, &per_row);
  std::vector<double> out(static_cast<std::size_t>(B), 0.0);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t t = 0; t < T; ++t)
      if (targets[static_cast<std::size_t>(b * T + t)] >= 0)
        out[static_cast<std::size_t>(b)] -= per_row[static_cast<std::size_t>(b * T + t)];
  return out;
}

namespace {
// np.argmax: the first maximum.
std::size_t argmax(const std::vector<double>& v) {
  std::size_t best = 0;
  for (std::size_t i = 1; i < v.size(); ++i)
    if (v[i] > v[best]) best = i;
  return best;
}
}  // namespace

bool QuestionResult::correct() const { return static_cast<int>(argmax(loglikelihoods)) == gold; }

bool QuestionResult::correct_norm() const {
  std::vector<double> normed(loglikelihoods.size());
  for (std::size_t i = 0; i < normed.size(); ++i)
    normed[i] = loglikelihoods[i] / static_cast<double>(choice_lengths[i]);
  return static_cast<int>(argmax(normed)) == gold;
}

double QuestionResult::true_probability_mass() const {
  double all = 0, true_mass = 0;
  for (std::size_t i = 0; i < loglikelihoods.size(); ++i) {
    const double p = std::exp(loglikelihoods[i]);
    all += p;
    if (static_cast<std::int64_t>(i) < true_count) true_mass += p;
  }
  return true_mass / all;
}

double mean_stderr(std::span<const double> scores) {
  const double n = static_cast<double>(scores.size());
  if (scores.size() < 2) return std::numeric_limits<double>::quiet_NaN();
  double mean = 0;
  for (double s : scores) mean += s;
  mean /= n;
  double ss = 0;
  for (double s : scores) ss += (s - mean) * (s - mean);
  return std::sqrt(ss / (n - 1)) / std::sqrt(n);
}

double pooled_stderr(std::span<const double> stderrs, std::span<const std::int64_t> sizes) {
  double numerator = 0, total = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    const double n = static_cast<double>(sizes[i]);
    total += n;
    if (sizes[i] > 1) numerator += (n - 1) * stderrs[i] * stderrs[i] * n;
  }
  const double dof = total - static_cast<double>(sizes.size());
  if (dof <= 0) return std::numeric_limits<double>::quiet_NaN();
  return std::sqrt(numerator / dof / total);
}

namespace {
MetricRow make_row(const std::string& task, const std::string& metric, const std::vector<double>& scores,
                   const std::string& filter = "none") {
  MetricRow row{task, metric, filter, 0, mean_stderr(scores), static_cast<std::int64_t>(scores.size())};
  for (double s : scores) row.value += s;
  if (!scores.empty()) row.value /= static_cast<double>(scores.size());
  return row;
}
}  // namespace

std::vector<MetricRow> task_metrics(TaskKind kind, std::span<const QuestionResult> results) {
  std::vector<MetricRow> rows;
  if (kind == TaskKind::Mmlu) {
    std::map<std::string, std::vector<double>> by_subject;
    std::vector<double> all;
    for (const QuestionResult& r : results) {
      by_subject[r.subject].push_back(r.correct() ? 1.0 : 0.0);
      all.push_back(r.correct() ? 1.0 : 0.0);
    }
    std::vector<double> stderrs;
    std::vector<std::int64_t> sizes;
    for (const auto& [subject, scores] : by_subject) {
      rows.push_back(make_row("mmlu_" + subject, "acc", scores));
      stderrs.push_back(rows.back().stderr_value);
      sizes.push_back(rows.back().count);
    }
    MetricRow average = make_row("mmlu", "acc", all);  // size-weighted mean = mean over all questions
    average.stderr_value = pooled_stderr(stderrs, sizes);
    rows.push_back(average);
    return rows;
  }
  if (kind == TaskKind::TruthfulQaMc2) {
    std::vector<double> mass;
    for (const QuestionResult& r : results) mass.push_back(r.true_probability_mass());
    return {make_row(task_kind_name(kind), "acc", mass)};
  }
  std::vector<double> acc, acc_norm;
  for (const QuestionResult& r : results) {
    acc.push_back(r.correct() ? 1.0 : 0.0);
    acc_norm.push_back(r.correct_norm() ? 1.0 : 0.0);
  }
  rows.push_back(make_row(task_kind_name(kind), "acc", acc));
  if (task_reports_acc_norm(kind)) rows.push_back(make_row(task_kind_name(kind), "acc_norm", acc_norm));
  return rows;
}

std::vector<MetricRow> generation_metrics(TaskKind kind, std::span<const std::vector<double>> scores) {
  const std::vector<std::string> filters = generation_filter_names(kind);
  std::vector<MetricRow> rows;
  for (std::size_t f = 0; f < filters.size(); ++f) {
    std::vector<double> column;
    for (const std::vector<double>& doc : scores) column.push_back(doc.at(f));
    rows.push_back(make_row(task_kind_name(kind), "exact_match", column, filters[f]));
  }
  return rows;
}

}  // namespace minitron
