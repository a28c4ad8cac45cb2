// Log-likelihood scoring of (context, continuation) requests the way lm-evaluation-harness's
// HFLM does it (lm_eval/api/model.py `_encode_pair`, lm_eval/models/huggingface.py
// `loglikelihood` / `_loglikelihood_tokens`), and the accuracy metrics over questions.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "eval/tasks.h"
#include "model/llama.h"
#include "train/losses.h"

namespace minitron {

struct EncodedRequest {
  std::vector<std::int32_t> context, continuation;
};

struct EncodeOptions {
  // HFLM's default for causal models is add_special_tokens=False (no BOS); --add-bos turns
  // the tokenizer's post-processor on, as the harness's add_bos_token=True does.
  bool add_special_tokens = false;
  // Prepended when the context is empty (HFLM.prefix_token_id: BOS, else EOS).
  std::optional<std::int32_t> prefix_token;
};

// HFLM.prefix_token_id: the tokenizer's BOS, else its EOS (none: an empty context cannot be
// scored). Every caller that scores tasks (eval, importance --task, the pipeline) uses this.
std::optional<std::int32_t> prefix_token_id(const Tokenizer& tokenizer);

// _encode_pair: trailing whitespace of the context moves to the front of the continuation;
// whole = encode(context + continuation), context_enc = encode(context), continuation_enc =
// whole[len(context_enc):]. An empty context becomes [prefix_token] + encode(continuation);
// a context that encodes to no tokens after its whitespace moved (" ", "\n") becomes
// [prefix_token] + whole (the harness asserts there instead).
EncodedRequest encode_request(const Tokenizer& tokenizer, const ChoiceRequest& request, const EncodeOptions& options);

// The model input of one request: (context + continuation)[-(max_length + 1):][:-1], and how
// many of its last positions predict continuation tokens. Fails when the continuation alone
// does not fit (harness: it would silently score a truncated continuation).
struct ScoringWindow {
  std::vector<std::int32_t> inputs;   // at most max_length tokens
  std::vector<std::int32_t> targets;  // same length: the continuation token each position
                                      // predicts, -1 where it predicts a context token
};
ScoringWindow scoring_window(const EncodedRequest& request, std::int64_t max_length);

// Scores requests in one batch (B = requests.size() <= model.max_batch(), rows right-padded
// to the longest with token 0 and target -1, which causal attention keeps from affecting the
// real positions). Returns sum of log p(continuation token) per request. `forward` passes
// options to the model's forward (skip_layers: a task's accuracy with layers removed).
std::vector<double> score_batch(LlamaModel& model, LossWorkspace& workspace, std::span<const ScoringWindow> windows,
                                const ForwardOptions& forward = {});

// ---- metrics ----
struct QuestionResult {
  std::vector<double> loglikelihoods;
  std::vector<std::int64_t> choice_lengths;
  int gold = 0;
  std::string subject;
  std::int64_t true_count = 0;  // truthfulqa_mc2: the leading choices that are true answers
  bool correct() const;         // argmax of loglikelihoods (first on ties, as np.argmax) == gold
  bool correct_norm() const;    // argmax of loglikelihood / len(choice) == gold
  // truthfulqa_mc2 (utils.py process_results_mc2): sum(exp(ll) of the true answers) /
  // sum(exp(ll) of all answers), with exp taken as it stands, as NumPy does.
  double true_probability_mass() const;
};

struct MetricRow {
  std::string task;             // "hellaswag", "mmlu_anatomy", "mmlu", ...
  std::string metric;           // "acc", "acc_norm", "exact_match"
  std::string filter = "none";  // the harness's filter name: "none", "strict-match", "flexible-extract"
  double value = 0;
  double stderr_value = 0;  // NaN when undefined (one document)
  std::int64_t count = 0;
};

// The harness's mean_stderr of 0/1 scores: sample std / sqrt(n) = sqrt(p(1-p)/(n-1)).
double mean_stderr(std::span<const double> scores);
// The harness's pooled_sample_stderr of a weight_by_size group (mmlu's average):
// sqrt(sum((n_i - 1) * n_i * stderr_i^2) / (N - k) / N); groups with n_i = 1 add nothing.
double pooled_stderr(std::span<const double> stderrs, std::span<const std::int64_t> sizes);

// Rows for one task: acc (and acc_norm where the harness reports it); for mmlu one row per
// subject ("mmlu_<subject>", sorted) and the size-weighted average "mmlu"; truthfulqa_mc2's acc is
// the mean true probability mass.
std::vector<MetricRow> task_metrics(TaskKind kind, std::span<const QuestionResult> results);

// Rows of a generative task: exact_match per filter (generation_filter_names), from each
// document's per-filter 0/1 scores.
std::vector<MetricRow> generation_metrics(TaskKind kind, std::span<const std::vector<double>> scores);

}  // namespace minitron
