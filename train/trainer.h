// The training loop shared by `train`, `correct` and `distill`: micro-batches with gradient
// accumulation, AdamW, periodic validation, resumable checkpoints, JSONL metrics.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "model/document_positions.h"
#include "model/llama.h"
#include "model/safetensors.h"
#include "train/losses.h"
#include "train/optimizer.h"
#include "util/progress.h"

namespace minitron {

// What a training step minimises on one micro-batch. step() runs the forward pass(es), the
// loss and the head backward (with grad_weight != 0); the trainer then calls model.backward().
// positions: the packed documents' positions of the inputs, for every forward of the step
// (ForwardOptions::positions), or empty (one document per row).
class Objective {
 public:
  virtual ~Objective() = default;
  virtual const char* name() const = 0;  // "cross_entropy", "kl", ...
  virtual double step(LlamaModel& model, std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets,
                      std::span<const std::int32_t> positions, std::int64_t batch, std::int64_t sequence,
                      float grad_weight) = 0;
  // Parameters an objective trains itself (the hidden-state map of distillation): updated
  // after the model's optimizer step (0-based step), saved into and restored from each
  // training checkpoint directory so that resume stays bit-exact.
  // Named values of the last micro-batch (a distillation's loss terms), the same names from
  // construction on: the trainer logs each beside the loss as its mean over the step's
  // micro-batches on every rank, as it does the loss.
  virtual std::vector<std::pair<std::string, double>> step_metrics() const { return {}; }
  virtual void optimizer_step(std::int64_t /*step*/, const OptimizerConfig& /*config*/) {}
  // Sums the gradients of those parameters over the ranks of a data-parallel run, as the
  // optimizer does for the model's, after the micro-batches and before optimizer_step().
  virtual void all_reduce_gradients(Communicator& /*communicator*/) {}
  virtual void save_state(const std::filesystem::path& /*checkpoint*/) const {}
  virtual void restore_state(const std::filesystem::path& /*checkpoint*/) {}
};

// Next-token cross-entropy: plain pre-training and teacher correction.
class CrossEntropyObjective : public Objective {
 public:
  explicit CrossEntropyObjective(LossWorkspace& workspace) : workspace_(workspace) {}
  const char* name() const override { return "cross_entropy"; }
  double step(LlamaModel& model, std::span<const std::int32_t> inputs, std::span<const std::int32_t> targets,
              std::span<const std::int32_t> positions, std::int64_t batch, std::int64_t sequence,
              float grad_weight) override;

 private:
  LossWorkspace& workspace_;
};

struct TrainOptions {
  std::int64_t batch_size = 4;
  std::int64_t sequence_length = 256;
  std::int64_t steps = 100;
  std::int64_t grad_accumulation = 1;
  std::int64_t eval_interval = 0;  // 0: validate only at the end
  std::int64_t eval_windows = 0;   // 0: every validation window
  std::int64_t save_interval = 0;  // 0: no intermediate checkpoints
  // Keep only the newest N output/checkpoint-* directories (by step), removing older ones once
  // a new one is complete; 0 keeps them all (Hugging Face's save_total_limit).
  std::int64_t save_total_limit = 0;
  // What the trained model keeps for backward: the caller builds the model with it.
  ActivationRecompute recompute = ActivationRecompute::None;
  // ZeRO stage (model/gradient_buckets.h) the caller builds the model with: 1 or 2, or 0 for
  // zero_stage_for's default. The run's results are stage 1's (to the bit with one micro-batch
  // per step).
  int zero_stage = 0;
  // Eos or Bos: every forward (training and validation) gets the positions of its inputs' documents
  // (document_positions_from_tokens, model/document_positions.h), cut at these token ids: the
  // model's eos_token_id or bos_token_id (non-empty then).
  DocumentBoundaries document_boundaries = DocumentBoundaries::None;
  std::vector<std::int64_t> boundary_token_ids;
  std::int64_t log_interval = 1;
  std::uint64_t seed = 1337;
  SafetensorsDType save_dtype = SafetensorsDType::BF16;
  OptimizerConfig optimizer;
  std::filesystem::path output;
  bool resume = false;  // continue from the newest output/checkpoint-* when one exists
  // Supervised fine-tuning: the shards must be SFT shards (data/shards.h; token shards
  // otherwise), and the loss and its gradient are the mean over the counted (unmasked) targets
  // of the whole step, every micro-batch of every rank, not a mean of micro-batch means: each
  // micro-batch's objective gets grad_weight = its counted targets / the step's (summed over
  // ranks before any backward), which an objective whose value is the mean over its counted rows
  // turns into 1 / the step's count per target.
  bool masked_targets = false;
  std::vector<std::filesystem::path> train_shards, validation_shards;
  std::vector<std::filesystem::path> companion_files;  // copied beside every saved model
  // Checkpoint directories the run reads: output/model and output/checkpoint-N must not be,
  // contain or lie inside them (check_checkpoint_output).
  std::vector<std::filesystem::path> input_models;
};

struct TrainSummary {
  std::int64_t steps = 0;
  double last_train_loss = std::numeric_limits<double>::quiet_NaN();
  double validation_loss = std::numeric_limits<double>::quiet_NaN();
  double tokens_per_second = 0;
  double seconds = 0;
};

// Trains model (a Training-mode model holding its initial parameters) and writes
// output/model (the final HF checkpoint), output/checkpoint-<step> (resumable) and
// output/metrics.jsonl; validates on options.validation_shards when any are given.
TrainSummary run_training(LlamaModel& model, Objective& objective, const TrainOptions& options);

// The same as one rank of a data-parallel run (dist/communicator.h): each rank trains on its
// own batch_size windows per micro-batch (TrainLoader's rank and world size), gradients are
// summed over ranks with micro-batch weights 1 / (grad_accumulation x world size) (with
// masked_targets: counted targets / the step's on all ranks), and the loss is the mean over ranks, so rank 0 logs what
// one process with grad_accumulation x world size micro-batches would. Rank 0 alone prints, validates and writes
// anything under options.output; every rank resumes from the same checkpoint, and all leave together (a barrier) once
// rank 0 has saved. The summary's tokens per second count every rank.
TrainSummary run_training(LlamaModel& model, Objective& objective, const TrainOptions& options,
                          Communicator& communicator);

// Refuses (an Error naming the path) an options.output whose model/ or checkpoint-<step>/ the
// run would replace but must not (check_checkpoint_output): callers check it before loading
// weights, and run_training again before it writes anything.
void check_training_output(const TrainOptions& options);

// The ZeRO stage of a run of world_size ranks asked for `requested` (TrainOptions::zero_stage):
// itself when 1 or 2, else 2 with several ranks (the gradient sharded too) and 1 alone.
int zero_stage_for(int requested, std::int64_t world_size);

// The newest output/checkpoint-<step> directory, or empty.
std::filesystem::path latest_checkpoint(const std::filesystem::path& output);

}  // namespace minitron
