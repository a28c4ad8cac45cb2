// Where a command's model comes from (--model DIR or --config FILE) and the training flags
// shared by train, correct and distill.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <cxxopts.hpp>

#include "core/backend.h"
#include "dist/communicator.h"
#include "dist/environment.h"
#include "model/config.h"
#include "train/memory_plan.h"
#include "train/trainer.h"

namespace minitron::cli {

struct ModelSource {
  ModelConfig config;
  std::filesystem::path checkpoint_dir;                // empty: random init from a config file
  std::vector<std::filesystem::path> companion_files;  // tokenizer files to copy into outputs
  std::string description;
};

// From --model DIR or --config FILE (exactly one), plus an optional --tokenizer.
ModelSource model_source_from_flags(const cxxopts::ParseResult& result);
// The checkpoint's weights, streamed tensor by tensor into the model (no host copy of the whole
// model), or a seeded random init.
void set_initial_parameters(const ModelSource& source, std::uint64_t seed, LlamaModel& model);

struct TrainingDefaults {
  std::int64_t steps = 1000;
  std::string learning_rate = "1e-4";
  // Used when --min-learning-rate is not given, lowered to the learning rate when that is
  // lower (only a given --min-learning-rate is range-checked). The help text says so unless a
  // command documents its own derivation (correct: learning rate / 10).
  double min_learning_rate = 1e-5;
  std::string min_learning_rate_help;
};
void add_training_options(cxxopts::Options& options, const TrainingDefaults& defaults);
TrainOptions parse_training_options(const cxxopts::ParseResult& result, const TrainingDefaults& defaults);
void print_training_summary(const TrainSummary& summary, const TrainOptions& options);
// --document-boundaries eos or bos: the EOS or BOS ids of the trained model's config into options
// (refused, naming model_name, when it has none); nothing for none.
void set_document_boundaries(TrainOptions& options, const ModelConfig& trained, const std::string& model_name);
// With --recompute selective or full: the activation memory the mode keeps and recomputes.
void print_activation_recompute(const LlamaModel& model);

// The engine a training command runs on and the ranks it trains with. A data-parallel run is
// launched like torchrun's or srun's (dist/environment.h): every process reads its rank from
// the environment and runs the same command line.
struct TrainingRun {
  DistributedEnvironment environment;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Communicator> communicator;
  bool lead() const { return environment.rank == 0; }  // the rank that prints and writes
};
// Points stdout at /dev/null: the ranks of a data-parallel run other than 0 print nothing but errors.
void silence_stdout();
// Reads the environment, then: the backend for --device (with several ranks, cuda means
// cuda:<LOCAL_RANK>, one GPU per process); `before_join` with the backend and the world size
// (e.g. the memory check, so a run that cannot fit fails on every rank without waiting for the
// others); the communicator, which waits for every rank. Ranks other than 0 print nothing from
// here on but errors.
TrainingRun open_training_run(const cxxopts::ParseResult& result,
                              const std::function<void(Backend&, std::int64_t world_size)>& before_join = {});

// The memory plan's view of a cross-entropy run of `config` with these options on world_size
// ranks (distill adds its teacher and loss settings).
TrainingShape training_shape(const ModelConfig& config, const TrainOptions& options, std::int64_t world_size);

// The same from the training flags alone (no --data or --output needed, nothing read): what
// `plan` computes for a command line of train, correct or distill.
TrainingShape training_shape_from_flags(const cxxopts::ParseResult& result, const ModelConfig& config,
                                        std::int64_t world_size);
// --recompute as a mode, refused in one line naming the flag.
ActivationRecompute recompute_from_flags(const cxxopts::ParseResult& result);
// --zero-stage: 1 or 2, 0 when not given (zero_stage_for picks), refused in one line otherwise.
int zero_stage_from_flags(const cxxopts::ParseResult& result);
// How the trained model keeps its gradients on this run's ranks; settles options.zero_stage.
GradientSharding gradient_sharding(TrainOptions& options, const TrainingRun& run);

// Fails naming `flag` unless `tokens` positions fit the model (max_position_embeddings).
void check_sequence_length(const char* flag, std::int64_t tokens, const ModelConfig& config);

// The cross-entropy run shared by train and correct: the model from `source` on --device,
// "<banner> on <device>: <N> parameters" printed, run_training, the summary.
void train_with_cross_entropy(const cxxopts::ParseResult& result, const ModelSource& source, TrainOptions options,
                              const std::string& banner);

}  // namespace minitron::cli
