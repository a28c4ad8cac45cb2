// Depth importance by removal: the LM loss on held-out windows when one layer, or one
// contiguous block of k layers, is replaced by the identity (ForwardOptions::skip_layers).
// The Minitron recipe drops the contiguous block whose removal hurts least.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/dataloader.h"
#include "model/llama.h"
#include "prune/scores.h"
#include "train/losses.h"

namespace minitron {

// Windows held in host memory, evaluated many times (once per removed block).
struct HeldOutWindows {
  std::int64_t count = 0, sequence_length = 0;
  std::vector<std::int32_t> inputs, targets;  // [count * T] each
};
// Windows [first, first + count) of the shards; fails when they do not exist.
HeldOutWindows read_windows(const TokenWindows& windows, std::int64_t first, std::int64_t count,
                            const std::string& what);

// Mean next-token cross-entropy over every target token of the windows with the marked
// layers skipped (skip empty: nothing skipped). Batches of model.max_batch() windows.
double removal_loss(LlamaModel& model, const HeldOutWindows& windows, const std::vector<bool>& skip,
                    LossWorkspace& workspace);

// A score (an evaluation task's accuracy) of the model with the marked layers skipped (skip
// empty: nothing skipped); `minitron importance --task` supplies one built on eval/run_task.h.
using RemovalMetric = std::function<double(LlamaModel& model, const std::vector<bool>& skip)>;

struct LayerRankingOptions {
  std::vector<std::int64_t> block_sizes;  // k values; 1 is always covered by the single-layer pass
  RemovalMetric task_metric;              // optional
  std::string task_name;
  bool show_progress = false;
};

// Baseline loss, single-layer removal losses and block-removal losses for each k; with a
// task_metric also its value with each single layer and each block removed (its baseline,
// nothing removed, is the caller's: baseline_task_score stays empty here).
// Block importance is not computed here (it comes from the calibration observer).
LayerScores rank_layers_by_removal(LlamaModel& model, const HeldOutWindows& windows, LossWorkspace& workspace,
                                   const LayerRankingOptions& options);

}  // namespace minitron
