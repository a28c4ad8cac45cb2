#include "train/evaluate.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "util/progress.h"

namespace minitron {

EvalResult evaluate_loss(LlamaModel& model, EvalLoader& loader, LossWorkspace& workspace, bool show_progress,
                         DocumentBoundaries boundaries, std::span<const std::int64_t> boundary_token_ids) {
  const std::int64_t T = loader.windows().sequence_length();
  const std::int64_t B = model.max_batch();
  std::vector<std::int32_t> inputs(static_cast<std::size_t>(B * T)), targets(inputs.size());
  // SFT shards record their documents; token shards are cut at boundary_token_ids when asked.
  const bool sft_shards = loader.windows().kind() == ShardKind::Sft;
  const bool packed = sft_shards || boundaries != DocumentBoundaries::None;
  std::vector<std::int32_t> positions(packed ? inputs.size() : 0);
  loader.reset();
  EvalResult result;
  double sum = 0.0;
  std::unique_ptr<Progress> progress;
  if (show_progress) progress = std::make_unique<Progress>("eval", loader.total_batches(), "batch");
  while (std::int64_t windows =
             loader.next(inputs, targets, sft_shards ? std::span(positions) : std::span<std::int32_t>())) {
    const std::size_t n = static_cast<std::size_t>(windows * T);
    ForwardOptions options;
    if (packed) {
      options.positions = std::span(positions).first(n);
      if (!sft_shards)
        document_positions_from_tokens(boundaries, boundary_token_ids, std::span(inputs).first(n), T,
                                       std::span(positions).first(n));
    }
    model.forward(std::span(inputs).first(n), windows, T, options);
    const std::span<const std::int32_t> batch_targets = std::span(targets).first(n);
    double mean = cross_entropy_loss(model, batch_targets, workspace);
    // SFT shards leave out masked targets: the mean is over the counted ones.
    const auto counted =
        std::count_if(batch_targets.begin(), batch_targets.end(), [](std::int32_t t) { return t >= 0; });
    sum += mean * static_cast<double>(counted);
    result.tokens += static_cast<std::int64_t>(counted);
    result.windows += windows;
    if (progress) progress->advance();
  }
  if (progress) progress->finish();
  if (result.tokens > 0) result.loss = sum / static_cast<double>(result.tokens);
  result.perplexity = std::exp(result.loss);
  return result;
}

}  // namespace minitron
