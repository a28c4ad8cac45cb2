// The importance scores file: self-describing JSON that records what was measured (model,
// data, samples, sequence length, aggregation, MLP site) beside the scores, so pruning can be
// redone or audited without recalibrating. Arrays are indexed by the original model's layers
// and channels.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
#include "prune/importance.h"

namespace minitron {

// Depth ranking: LM loss on held-out windows with layers removed (identity), and Block
// Importance (1 - mean cos(layer input, layer output)); empty members were not measured.
struct LayerScores {
  std::int64_t windows = 0;                                        // held-out windows of the loss ranking
  std::optional<double> baseline_loss;                             // nothing removed
  std::vector<double> single_removal_loss;                         // [layers]: loss with layer l removed
  std::map<std::int64_t, std::vector<double>> block_removal_loss;  // k -> [layers - k + 1], block s..s+k-1
  std::vector<double> block_importance;                            // [layers]
  // Accuracy on an evaluation task with each block removed (same layout as
  // block_removal_loss); filled only when a task metric is supplied to rank_layers.
  std::string task;
  std::optional<double> baseline_task_score;  // nothing removed
  std::map<std::int64_t, std::vector<double>> block_removal_task_score;
};

struct ImportanceScores {
  // What the scores were measured on; the shape fields are checked before pruning.
  std::int64_t hidden_size = 0, intermediate_size = 0, num_layers = 0;
  std::int64_t num_attention_heads = 0, num_key_value_heads = 0, head_dim = 0, vocab_size = 0;
  nlohmann::json provenance = nlohmann::json::object();  // model, data, samples, T, aggregation, ...
  WidthScores width;
  LayerScores layers;
};

inline constexpr const char* kScoresFormat = "minitron-importance";
inline constexpr int kScoresVersion = 1;

// Shape fields from a config, everything else empty.
ImportanceScores empty_scores(const ModelConfig& config);

// Uniform random scores of every kind (width arrays, block-removal losses for every k, block
// importance) from a seed: the "random pruning" baseline that importance must beat.
ImportanceScores random_scores(const ModelConfig& config, std::uint64_t seed);

nlohmann::json scores_to_json(const ImportanceScores& scores);
ImportanceScores scores_from_json(const nlohmann::json& json, const std::string& where);
// Fails naming `where`, the site (mlp neuron / attention head / channel / hidden channel /
// removal loss / block importance) and its layer when a score is NaN or infinite.
void check_scores_finite(const ImportanceScores& scores, const std::string& where);
// Atomic; refuses non-finite scores (check_scores_finite) before writing anything.
void save_scores(const std::filesystem::path& path, const ImportanceScores& scores);
ImportanceScores load_scores(const std::filesystem::path& path);

// Throws an Error when the scores were measured on a model of another shape, or arrays are
// missing or of the wrong length.
void check_scores_match(const ImportanceScores& scores, const ModelConfig& config, const std::string& where);

}  // namespace minitron
