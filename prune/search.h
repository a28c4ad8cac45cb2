// The lightweight architecture search of the Minitron paper: enumerate pruned architectures
// (hidden size, FFN size, query heads, layers in coarse steps) whose parameter count is within
// a tolerance of a budget, rank them by zero-shot validation loss after pruning and,
// optionally, rank the best few again after a short distillation from the teacher.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/backend.h"
#include "model/checkpoint.h"
#include "model/config.h"
#include "prune/layer_ranking.h"
#include "prune/scores.h"
#include "prune/slicing.h"

namespace minitron {

// "4.5B", "350M", "20K", "123456" -> a parameter count.
std::int64_t parse_parameter_count(const std::string& text, const std::string& flag = "--target-params");

// Total parameters of a config (tied head counted once): ParameterTable(config).total_numel().
std::int64_t parameter_count(const ModelConfig& config);

struct Architecture {
  std::int64_t hidden_size = 0, intermediate_size = 0, num_attention_heads = 0, num_key_value_heads = 0;
  std::int64_t num_layers = 0, parameters = 0;
};
nlohmann::json architecture_to_json(const Architecture& a);
std::string architecture_string(const Architecture& a);  // "hidden 3072, ffn 9216, heads 32/8, layers 32"
PruneTargets targets_of(const Architecture& a, LayerCriterion criterion);

struct SearchGrid {
  // Steps and lower bounds of each axis; the defaults follow the paper's grids (multiples of
  // 256 for hidden / 512 for FFN on large models, every layer count down to half the depth).
  std::int64_t hidden_step = 0, intermediate_step = 0;  // 0: chosen from the model's size
  double min_width_fraction = 0.25;                     // hidden and FFN at least this share
  double min_depth_fraction = 0.5;
};

// Every architecture on the grid within +-tolerance of target parameters (KV heads kept,
// query heads a multiple of them), closest to the target first.
std::vector<Architecture> enumerate_architectures(const ModelConfig& config, std::int64_t target,
                                                  double tolerance = 0.05, const SearchGrid& grid = {});

// At most n of them, spread evenly over the list (the first and the last always included).
std::vector<Architecture> spread_subset(const std::vector<Architecture>& all, std::size_t n);

// Mean next-token loss of a (pruned) model on held-out windows, nothing trained: Inference
// mode, batches of up to batch_size windows.
double zero_shot_loss(const ModelConfig& config, std::span<const float> params, Backend& backend,
                      const HeldOutWindows& windows, std::int64_t batch_size);

struct ArchitectureSearchOptions {
  std::int64_t target_parameters = 0;  // below the teacher's count
  double tolerance = 0.05;             // relative to target_parameters
  std::int64_t max_candidates = 8;     // ranked by zero-shot loss, spread over those that fit
  // How each candidate depth's dropped block is chosen.
  LayerCriterion layer_criterion = LayerCriterion::Loss;
  std::int64_t batch_size = 4;  // windows per forward pass and per training step
  // The short distillation (forward KL, temperature 1) of the best distilled_candidates by
  // zero-shot loss, each for distillation_steps steps; 0 steps: zero-shot ranking only.
  std::int64_t distillation_steps = 0;
  std::int64_t distilled_candidates = 3;
  double learning_rate = 1e-4;  // peak; the minimum is a tenth of it
  std::vector<std::filesystem::path> train_shards, validation_shards;
  std::filesystem::path teacher_directory;  // the runs must not write into it
  // Scratch space for the candidates' runs, created and removed by the search (success or
  // failure), so nothing else may live there: prune uses a process_sibling of its output.
  std::filesystem::path work_directory;
};

struct RankedArchitecture {
  Architecture architecture;
  double zero_shot_loss = 0;
  std::optional<double> distilled_loss;  // validation loss after the short distillation
};

struct ArchitectureSearchResult {
  std::size_t fitting_architectures = 0;  // on the grid within the tolerance, before the spread
  // Best first: the distilled candidates by distilled loss, then the rest by zero-shot loss
  // (stable: ties keep the grid's order, closest to the target first).
  std::vector<RankedArchitecture> ranked;
};

// The whole search on the teacher's weights, validated on `validation` (its sequence length is
// the distillation's). Prints what it does as it goes: depths left out because the scores
// cannot rank their blocks, each candidate's zero-shot loss, each distillation run's progress.
// Fails (an Error naming --target-params) when the budget is not below the teacher's size or
// no architecture fits it.
ArchitectureSearchResult search_architectures(const LoadedCheckpoint& teacher, const ImportanceScores& scores,
                                              Backend& backend, const HeldOutWindows& validation,
                                              const ArchitectureSearchOptions& options);

// search.json: the options that shaped the search and its ranking, best first.
nlohmann::json search_to_json(const ArchitectureSearchResult& result, const ArchitectureSearchOptions& options,
                              const HeldOutWindows& validation);

}  // namespace minitron
