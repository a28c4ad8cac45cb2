#include "eval/run_task.h"

#include <algorithm>
#include <memory>

#include "model/llama.h"
#include "train/losses.h"
#include "util/error.h"
#include "util/progress.h"

namespace minitron {

TaskRunResult run_task(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
                       const Tokenizer& tokenizer, const ModelConfig& config, std::span<const float> params,
                       Backend& backend, const TaskRunOptions& options) {
  const std::int64_t max_length = options.max_length > 0 ? options.max_length : config.max_position_embeddings;
  const std::int64_t count = options.limit > 0 ? std::min<std::int64_t>(options.limit, static_cast<std::int64_t>(docs.size()))
                                               : static_cast<std::int64_t>(docs.size());
  const std::vector<TaskDoc>& pool = fewshot_pool ? *fewshot_pool : docs;

  // Rebuilt in both passes rather than stored: 5-shot MMLU holds ~100 MB of prompt text.
  auto windows_for = [&](std::int64_t i, Question& question) {
    const TaskDoc& doc = docs[static_cast<std::size_t>(i)];
    const std::vector<const TaskDoc*> shots = select_fewshot(kind, pool, doc, fewshot_pool == nullptr, options.shots);
    if (static_cast<std::int64_t>(shots.size()) < options.shots)
      fail_expected("--shots", str(options.shots, " examples requested, only ", shots.size(), " available for document ", i + 1),
                    "a larger few-shot pool (--fewshot-file) or fewer shots");
    question = build_question(kind, doc, fewshot_prefix(kind, doc.subject, shots));
    std::vector<ScoringWindow> windows;
    for (const ChoiceRequest& r : question.requests)
      windows.push_back(scoring_window(encode_request(tokenizer, r, options.encode), max_length));
    return windows;
  };

  TaskRunResult result;
  for (std::int64_t i = 0; i < count; ++i) {
    Question q;
    for (const ScoringWindow& w : windows_for(i, q))
      result.max_sequence = std::max<std::int64_t>(result.max_sequence, static_cast<std::int64_t>(w.inputs.size()));
    result.max_batch = std::max<std::int64_t>(result.max_batch, static_cast<std::int64_t>(q.requests.size()));
  }
  if (count == 0) return result;

  LlamaModel model(config, backend, result.max_batch, result.max_sequence, ModelMode::Inference);
  model.set_parameters(params);
  LossWorkspace workspace(backend, config.vocab_size, result.max_batch * result.max_sequence);
  std::unique_ptr<Progress> progress;
  if (options.show_progress) progress = std::make_unique<Progress>(task_kind_name(kind), count, "questions");
  for (std::int64_t i = 0; i < count; ++i) {
    Question q;
    const std::vector<ScoringWindow> windows = windows_for(i, q);
    QuestionResult r;
    r.loglikelihoods = score_batch(model, workspace, windows);
    r.choice_lengths = q.choice_lengths;
    r.gold = q.gold;
    r.subject = q.subject;
    result.questions.push_back(std::move(r));
    if (progress) progress->advance();
  }
  if (progress) progress->finish();
  result.rows = task_metrics(kind, result.questions);
  return result;
}

}  // namespace minitron
