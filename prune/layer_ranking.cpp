#include "prune/layer_ranking.h"

#include <algorithm>
#include <memory>

#include "util/error.h"
#include "util/progress.h"

namespace minitron {

HeldOutWindows read_windows(const TokenWindows& windows, std::int64_t first, std::int64_t count,
                            const std::string& what) {
  if (first < 0 || count < 0 || first + count > windows.count())
    fail_expected(what,
                  str("windows ", first, "..", first + count - 1, " are needed but the shards hold ", windows.count(),
                      " windows of ", windows.sequence_length() + 1, " tokens"),
                  "more data, fewer samples/windows or a shorter --sequence-length");
  HeldOutWindows out;
  out.count = count;
  out.sequence_length = windows.sequence_length();
  const std::int64_t T = out.sequence_length;
  out.inputs.resize(static_cast<std::size_t>(count * T));
  out.targets.resize(out.inputs.size());
  for (std::int64_t i = 0; i < count; ++i)
    windows.copy(first + i, out.inputs.data() + i * T, out.targets.data() + i * T);
  return out;
}

double removal_loss(LlamaModel& model, const HeldOutWindows& windows, const std::vector<bool>& skip,
                    LossWorkspace& workspace) {
  const std::int64_t T = windows.sequence_length, B = model.max_batch();
  ForwardOptions options;
  if (!skip.empty()) options.skip_layers = &skip;
  double sum = 0;
  std::int64_t tokens = 0;
  for (std::int64_t w = 0; w < windows.count; w += B) {
    const std::int64_t b = std::min(B, windows.count - w);
    const auto offset = static_cast<std::size_t>(w * T), n = static_cast<std::size_t>(b * T);
    model.forward(std::span(windows.inputs).subspan(offset, n), b, T, options);
    sum += cross_entropy_loss(model, std::span(windows.targets).subspan(offset, n), workspace) * static_cast<double>(n);
    tokens += static_cast<std::int64_t>(n);
  }
  return tokens > 0 ? sum / static_cast<double>(tokens) : 0.0;
}

LayerScores rank_layers_by_removal(LlamaModel& model, const HeldOutWindows& windows, LossWorkspace& workspace,
                                   const LayerRankingOptions& options) {
  const std::int64_t L = model.config().num_hidden_layers;
  std::vector<std::int64_t> sizes;
  for (std::int64_t k : options.block_sizes) {
    if (k < 1 || k >= L)
      fail_expected("--block-size", str(k), str("from 1 to ", L - 1, " (removing all ", L, " layers leaves no model)"));
    if (k > 1 && std::find(sizes.begin(), sizes.end(), k) == sizes.end()) sizes.push_back(k);
  }
  LayerScores scores;
  scores.windows = windows.count;
  scores.task = options.task_name;
  std::int64_t passes = 1 + L;
  for (std::int64_t k : sizes) passes += L - k + 1;
  if (options.task_metric) passes = 1 + 2 * (passes - 1);
  std::unique_ptr<Progress> progress;
  if (options.show_progress) progress = std::make_unique<Progress>("layer ranking", passes, "pass");
  auto evaluate = [&](const std::vector<bool>& skip) {
    double loss = removal_loss(model, windows, skip, workspace);
    if (progress) progress->advance();
    return loss;
  };
  auto task_score = [&](const std::vector<bool>& skip) {
    const double score = options.task_metric(model, skip);
    if (progress) progress->advance();
    return score;
  };

  scores.baseline_loss = evaluate({});
  std::vector<double>& single = scores.single_removal_loss;
  for (std::int64_t l = 0; l < L; ++l) {
    std::vector<bool> skip(static_cast<std::size_t>(L), false);
    skip[static_cast<std::size_t>(l)] = true;
    single.push_back(evaluate(skip));
  }
  // k = 1 blocks are the single layers; storing them keeps "--num-layers L-1" on one path.
  scores.block_removal_loss[1] = single;
  if (options.task_metric) {
    auto& task1 = scores.block_removal_task_score[1];
    for (std::int64_t l = 0; l < L; ++l) {
      std::vector<bool> skip(static_cast<std::size_t>(L), false);
      skip[static_cast<std::size_t>(l)] = true;
      task1.push_back(task_score(skip));
    }
  }
  for (std::int64_t k : sizes) {
    std::vector<double>& losses = scores.block_removal_loss[k];
    for (std::int64_t s = 0; s + k <= L; ++s) {
      std::vector<bool> skip(static_cast<std::size_t>(L), false);
      for (std::int64_t l = s; l < s + k; ++l) skip[static_cast<std::size_t>(l)] = true;
      losses.push_back(evaluate(skip));
      if (options.task_metric) scores.block_removal_task_score[k].push_back(task_score(skip));
    }
  }
  if (progress) progress->finish();
  return scores;
}

}  // namespace minitron
