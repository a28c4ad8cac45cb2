// Width and depth pruning as DESIGN.md states it: keep the top-k by score in the original
// order. Hidden channels: one global set, applied to embed_tokens columns, every norm weight,
// every q/k/v/gate/up input column, every o/down output row, the final norm and lm_head's
// input columns. FFN: per layer, rows of gate/up and columns of down. Heads: ranked inside each
// KV group, the same number kept per group; K/V heads kept unless fewer groups are asked for
// (then whole groups go, ranked by the sum of their query heads' scores). head_dim stays.
// Depth: drop one contiguous block of layers.
//
// Everything goes through the ParameterTable: the pruned config gets its own table, and each
// of its tensors is filled with a slice of the same-named tensor of the original layer.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model/config.h"
#include "model/parameters.h"
#include "prune/scores.h"

namespace minitron {

// How --num-layers ranks the contiguous blocks it may drop:
//   Loss             the held-out LM loss with the block removed (lowest wins);
//   BlockImportance  the sum of the block's per-layer Block Importance (lowest wins);
//   Task             the evaluation task's accuracy with the block removed (highest wins; ties:
//                    the lower removal loss, then the earliest block). Accuracies are counts of
//                    correct answers over one question count, so ties are common and exact.
enum class LayerCriterion { Loss, BlockImportance, Task };
LayerCriterion parse_layer_criterion(const std::string& text);  // "loss" | "block-importance" | "task"
const char* layer_criterion_name(LayerCriterion criterion);

// The kernels read activations in 16-byte vectors (8 bf16 values), so the hidden size must be
// a multiple of 8.
inline constexpr std::int64_t kHiddenSizeMultiple = 8;

struct PruneTargets {
  std::optional<std::int64_t> hidden_size, intermediate_size, num_attention_heads, num_key_value_heads;
  std::optional<std::int64_t> num_layers;
  std::optional<std::pair<std::int64_t, std::int64_t>> drop_layers;  // zero-based, inclusive
  LayerCriterion layer_criterion = LayerCriterion::Loss;
};

// "15-30" (zero-based, inclusive) or "7" (one layer).
std::pair<std::int64_t, std::int64_t> parse_layer_range(const std::string& text);

struct PrunePlan {
  ModelConfig config;                                                  // the pruned model
  std::vector<std::int64_t> layers;                                    // original index of each kept layer
  std::vector<std::int64_t> hidden;                                    // kept hidden channels
  std::vector<std::vector<std::int64_t>> ffn;                          // per kept layer: kept neurons
  std::vector<std::vector<std::int64_t>> query_heads;                  // per kept layer: kept query heads
  std::vector<std::vector<std::int64_t>> kv_heads;                     // per kept layer: kept KV heads
  std::optional<std::pair<std::int64_t, std::int64_t>> dropped_block;  // original indices, inclusive
};

// Indices of the k largest scores, in increasing index order. Ties keep the lower index.
std::vector<std::int64_t> top_k_in_order(std::span<const double> scores, std::int64_t k);

// Validates the targets (clear errors for impossible ones) and chooses what to keep. Scores are
// only needed for the axes that shrink.
PrunePlan plan_pruning(const ModelConfig& config, const ImportanceScores& scores, const PruneTargets& targets);

// The start of the contiguous block of k layers whose removal hurts least by the criterion.
// Throws an Error naming the importance flags that would produce the missing scores.
std::int64_t least_important_block(const ImportanceScores& scores, std::int64_t num_layers, std::int64_t k,
                                   LayerCriterion criterion);

// The pruned model's parameters (plan.config's table order) sliced from the original ones.
std::vector<float> slice_parameters(const ModelConfig& config, const ParameterTable& table,
                                    std::span<const float> params, const PrunePlan& plan);

}  // namespace minitron
