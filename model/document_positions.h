// Packed documents: per-token positions that restart at 0 at each document's first token
// (Hugging Face's position_ids under TRL's padding-free packing), what LlamaModel::forward takes
// in ForwardOptions::positions. Header-only: the model checks them, the trainer derives them
// from EOS-separated pretraining shards, a chat loader writes its own.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "util/error.h"

namespace minitron {

// Refuses (one line naming the row and token) positions that are not a packing of whole
// documents into rows of `sequence` tokens: each row's first position is 0 and every other is
// 0 (a new document) or its predecessor + 1. The attention kernels index keys by
// t - positions[t], so a malformed table would read outside the row.
inline void check_document_positions(std::span<const std::int32_t> positions, std::int64_t batch,
                                     std::int64_t sequence) {
  if (static_cast<std::int64_t>(positions.size()) != batch * sequence)
    fail_expected("document positions", str(positions.size(), " positions"),
                  str("one per token (", batch, " x ", sequence, " = ", batch * sequence, ")"));
  for (std::int64_t b = 0; b < batch; ++b)
    for (std::int64_t t = 0; t < sequence; ++t) {
      const std::int32_t p = positions[static_cast<std::size_t>(b * sequence + t)];
      if (t == 0) {
        if (p != 0)
          fail_expected("document positions", str("position ", p, " at row ", b, ", token 0"),
                        "0 (each row starts a document)");
        continue;
      }
      const std::int32_t previous = positions[static_cast<std::size_t>(b * sequence + t - 1)];
      if (p != 0 && p != previous + 1)
        fail_expected("document positions", str("position ", p, " at row ", b, ", token ", t),
                      str("0 (a new document) or ", previous + 1, " (the previous position + 1)"));
    }
}

// Positions of EOS-separated documents (`--document-boundaries eos`): each row starts a
// document, and a new one starts after every EOS token, which ends (and belongs to) the
// document before it, as Megatron's reset_position_ids / reset_attention_mask split them.
// positions has tokens.size() elements.
inline void positions_after_eos(std::span<const std::int32_t> tokens, std::int64_t sequence, std::int32_t eos_token_id,
                                std::span<std::int32_t> positions) {
  MINITRON_ASSERT(sequence > 0 && positions.size() == tokens.size() &&
                  static_cast<std::int64_t>(tokens.size()) % sequence == 0);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const bool row_start = static_cast<std::int64_t>(i) % sequence == 0;
    positions[i] = row_start || tokens[i - 1] == eos_token_id ? 0 : positions[i - 1] + 1;
  }
}

}  // namespace minitron
