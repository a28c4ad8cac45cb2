// The lightweight architecture search of the Minitron paper: enumerate pruned architectures
// (hidden size, FFN size, query heads, layers in coarse steps) whose parameter count is within
// a tolerance of a budget; the caller ranks them by zero-shot validation loss after pruning
// and, optionally, after a short distillation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/config.h"
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

}  // namespace minitron
