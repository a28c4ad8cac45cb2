// Validation loss over token shards: mean next-token cross-entropy over the non-overlapping
// windows defined in DESIGN.md, every counted target token (all of a token shard's, the unmasked
// ones of an SFT shard's) weighted equally.
#pragma once

#include <cstdint>
#include <span>

#include "data/dataloader.h"
#include "model/document_positions.h"
#include "model/llama.h"
#include "train/losses.h"

namespace minitron {

struct EvalResult {
  double loss = 0;        // nats per token
  double perplexity = 0;  // exp(loss)
  std::int64_t tokens = 0;
  std::int64_t windows = 0;
};

// Runs every batch of the loader (from its start) through the model. show_progress draws a
// progress bar on stderr. Windows of SFT shards are cut into their recorded documents; windows of
// token shards, with boundaries other than None, at those token ids (--document-boundaries:
// document_positions_from_tokens, model/document_positions.h).
EvalResult evaluate_loss(LlamaModel& model, EvalLoader& loader, LossWorkspace& workspace, bool show_progress = false,
                         DocumentBoundaries boundaries = DocumentBoundaries::None,
                         std::span<const std::int64_t> boundary_token_ids = {});

}  // namespace minitron
