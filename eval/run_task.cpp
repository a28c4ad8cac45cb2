#include "eval/run_task.h"

#include <algorithm>
#include <memory>

#include "util/error.h"
#include "util/progress.h"

namespace minitron {

namespace {

// The documents to score, their few-shot examples (drawn once, in document order, as the
// harness's one RNG per task does) and the windows of each question. Prompts are rebuilt on
// demand rather than stored: 5-shot MMLU holds ~100 MB of prompt text.
class TaskRequests {
 public:
  TaskRequests(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
               const Tokenizer& tokenizer, std::int64_t max_length, const TaskRunOptions& options)
      : kind_(kind), docs_(docs), tokenizer_(tokenizer), max_length_(max_length), options_(options) {
    count_ = options.limit > 0 ? std::min<std::int64_t>(options.limit, static_cast<std::int64_t>(docs.size()))
                               : static_cast<std::int64_t>(docs.size());
    FewshotSampler sampler(kind, fewshot_pool ? *fewshot_pool : docs, fewshot_pool == nullptr, options.shots);
    for (std::int64_t i = 0; i < count_; ++i) examples_.push_back(sampler.next(docs[static_cast<std::size_t>(i)]));
  }
  std::int64_t count() const { return count_; }

  std::vector<ScoringWindow> windows(std::int64_t i, Question& question) const {
    const TaskDoc& doc = docs_[static_cast<std::size_t>(i)];
    question = build_question(kind_, doc, fewshot_prefix(kind_, doc.subject, examples_[static_cast<std::size_t>(i)]));
    std::vector<ScoringWindow> out;
    for (const ChoiceRequest& r : question.requests)
      out.push_back(scoring_window(encode_request(tokenizer_, r, options_.encode), max_length_));
    return out;
  }

  TaskShape shape() const {
    TaskShape s;
    for (std::int64_t i = 0; i < count_; ++i) {
      Question q;
      for (const ScoringWindow& w : windows(i, q))
        s.max_sequence = std::max<std::int64_t>(s.max_sequence, static_cast<std::int64_t>(w.inputs.size()));
      s.max_batch = std::max<std::int64_t>(s.max_batch, static_cast<std::int64_t>(q.requests.size()));
    }
    return s;
  }

  TaskRunResult score(LlamaModel& model, LossWorkspace& workspace, const ForwardOptions& forward) const {
    TaskRunResult result;
    std::unique_ptr<Progress> progress;
    if (options_.show_progress) progress = std::make_unique<Progress>(task_kind_name(kind_), count_, "questions");
    for (std::int64_t i = 0; i < count_; ++i) {
      Question q;
      const std::vector<ScoringWindow> ws = windows(i, q);
      for (const ScoringWindow& w : ws)
        if (static_cast<std::int64_t>(w.inputs.size()) > model.max_sequence() ||
            static_cast<std::int64_t>(ws.size()) > model.max_batch())
          fail_expected("task scoring",
                        str("document ", i + 1, " needs ", ws.size(), " rows of ", w.inputs.size(), " tokens"),
                        str("a model built for at least that (", model.max_batch(), " x ", model.max_sequence(), ")"));
      QuestionResult r;
      r.loglikelihoods = score_batch(model, workspace, ws, forward);
      r.choice_lengths = q.choice_lengths;
      r.gold = q.gold;
      r.subject = q.subject;
      result.questions.push_back(std::move(r));
      if (progress) progress->advance();
    }
    if (progress) progress->finish();
    result.rows = task_metrics(kind_, result.questions);
    return result;
  }

 private:
  TaskKind kind_;
  const std::vector<TaskDoc>& docs_;
  const Tokenizer& tokenizer_;
  std::int64_t max_length_;
  TaskRunOptions options_;
  std::int64_t count_ = 0;
  std::vector<std::vector<const TaskDoc*>> examples_;
};

}  // namespace

TaskShape task_shape(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
                     const Tokenizer& tokenizer, const ModelConfig& config, const TaskRunOptions& options) {
  const std::int64_t max_length = options.max_length > 0 ? options.max_length : config.max_position_embeddings;
  return TaskRequests(kind, docs, fewshot_pool, tokenizer, max_length, options).shape();
}

TaskRunResult run_task(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
                       const Tokenizer& tokenizer, const ModelConfig& config, std::span<const float> params,
                       Backend& backend, const TaskRunOptions& options) {
  const std::int64_t max_length = options.max_length > 0 ? options.max_length : config.max_position_embeddings;
  const TaskRequests requests(kind, docs, fewshot_pool, tokenizer, max_length, options);
  const TaskShape shape = requests.shape();
  if (requests.count() == 0) return {};
  LlamaModel model(config, backend, shape.max_batch, shape.max_sequence, ModelMode::Inference);
  model.set_parameters(params);
  LossWorkspace workspace(backend, config.vocab_size, shape.max_batch * shape.max_sequence);
  TaskRunResult result = requests.score(model, workspace, {});
  result.max_batch = shape.max_batch;
  result.max_sequence = shape.max_sequence;
  return result;
}

TaskRunResult run_task_on_model(TaskKind kind, const std::vector<TaskDoc>& docs,
                                const std::vector<TaskDoc>* fewshot_pool, const Tokenizer& tokenizer, LlamaModel& model,
                                LossWorkspace& workspace, const TaskRunOptions& options,
                                const ForwardOptions& forward) {
  const std::int64_t max_length = options.max_length > 0 ? options.max_length : model.config().max_position_embeddings;
  TaskRunResult result =
      TaskRequests(kind, docs, fewshot_pool, tokenizer, max_length, options).score(model, workspace, forward);
  result.max_batch = model.max_batch();
  result.max_sequence = model.max_sequence();
  return result;
}

double task_accuracy(TaskKind kind, const TaskRunResult& result) {
  const std::string name = task_kind_name(kind);
  for (const MetricRow& row : result.rows)
    if (row.task == name && row.metric == "acc") return row.value;
  fail(str("task_accuracy: no ", name, " acc row"));
}

}  // namespace minitron
