// One multiple-choice task end to end: documents -> harness requests -> batched scoring on a
// model built to the task's largest question -> metrics.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/backend.h"
#include "data/tokenizer.h"
#include "eval/scoring.h"
#include "eval/tasks.h"
#include "model/config.h"
#include "model/llama.h"
#include "train/losses.h"

namespace minitron {

struct TaskRunOptions {
  std::int64_t shots = 0;
  std::int64_t limit = 0;       // score only the first N documents (0 = all)
  std::int64_t max_length = 0;  // left-truncation length (0 = max_position_embeddings)
  EncodeOptions encode;
  bool show_progress = false;
};

struct TaskRunResult {
  std::vector<MetricRow> rows;
  std::vector<QuestionResult> questions;         // in document order
  std::int64_t max_batch = 0, max_sequence = 0;  // the model shape the task needed
};

// fewshot_pool: the documents examples are drawn from (nullptr: `docs` itself, each document
// excluded from its own examples). The model is built here (Inference mode) from config/params.
TaskRunResult run_task(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
                       const Tokenizer& tokenizer, const ModelConfig& config, std::span<const float> params,
                       Backend& backend, const TaskRunOptions& options);

// The model shape (choices of the largest question, longest window) run_task needs, without
// scoring: size a shared model with it. max_length 0 in options: config's max_position_embeddings.
struct TaskShape {
  std::int64_t max_batch = 0, max_sequence = 0;
};
TaskShape task_shape(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
                     const Tokenizer& tokenizer, const ModelConfig& config, const TaskRunOptions& options);

// The same run on a caller's model (at least task_shape() in batch and sequence; workspace for
// its max_batch x max_sequence rows), its forward passes taking `forward` (e.g. skip_layers:
// the task's accuracy with a block of layers removed). max_batch/max_sequence are the shape used.
TaskRunResult run_task_on_model(TaskKind kind, const std::vector<TaskDoc>& docs,
                                const std::vector<TaskDoc>* fewshot_pool, const Tokenizer& tokenizer, LlamaModel& model,
                                LossWorkspace& workspace, const TaskRunOptions& options,
                                const ForwardOptions& forward = {});

// The headline accuracy of a run: the "mmlu" average for mmlu, else the task's acc.
double task_accuracy(TaskKind kind, const TaskRunResult& result);

}  // namespace minitron
