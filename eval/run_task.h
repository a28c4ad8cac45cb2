// One task end to end: documents -> harness requests -> scoring on a model built to the task's
// largest request -> metrics. Multiple choice: each question's choices as one batch of
// log-likelihoods. Generative (gsm8k): greedy generation with a KV cache, batch_size documents at
// once (generate_batch), each stopped by the task's stop sequences, the EOS token or the length
// limit on its own, then each filter's exact match.
// With a communicator of several ranks, rank r scores documents r, r + N, r + 2N, ... (the
// harness's strided split) and the per-document scores are summed over ranks, so every rank ends
// with the numbers of one process; the few-shot examples are still drawn for every document in
// order, as one process draws them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/backend.h"
#include "data/tokenizer.h"
#include "dist/communicator.h"
#include "eval/prompts.h"
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
  PromptFormat format;  // --system-instruction, --apply-chat-template, --fewshot-as-multiturn
  // Generative tasks: HFLM.max_gen_toks (256); the prompt is left-truncated to max_length minus this.
  std::int64_t max_gen_toks = 256;
  // Generative tasks: generation also ends at these tokens (the checkpoint's and tokenizer's EOS).
  std::vector<std::int32_t> stop_tokens;
  // Generative tasks: documents generated together (the batch refills as each one finishes).
  // The scores do not depend on it on the CPU engine (up to 64: row-independent products).
  std::int64_t batch_size = 32;
  Communicator* communicator = nullptr;  // nullptr or one rank: every document here
};

struct TaskRunResult {
  std::vector<MetricRow> rows;
  std::vector<QuestionResult> questions;               // multiple choice, in document order
  std::vector<std::vector<double>> generation_scores;  // generative: per document, 0/1 per filter
  std::int64_t generations_at_limit = 0;               // generative: generations that reached max_gen_toks
  std::int64_t max_batch = 0, max_sequence = 0;        // the model shape the task needed
};

// fewshot_pool: the documents examples are drawn from (nullptr: `docs` itself, each document
// excluded from its own examples). The model is built here (Inference mode) from config/params.
TaskRunResult run_task(TaskKind kind, const std::vector<TaskDoc>& docs, const std::vector<TaskDoc>* fewshot_pool,
                       const Tokenizer& tokenizer, const ModelConfig& config, std::span<const float> params,
                       Backend& backend, const TaskRunOptions& options);

// The model shape (choices of the largest question, longest window) a multiple-choice task needs,
// without scoring: size a shared model with it. max_length 0 in options: config's max_position_embeddings.
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

// The headline accuracy of a run: the "mmlu" average for mmlu, strict-match exact_match for
// gsm8k, else the task's acc.
double task_accuracy(TaskKind kind, const TaskRunResult& result);

}  // namespace minitron
