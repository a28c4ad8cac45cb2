// Packed documents: per-token positions that restart at 0 at each document's first token
// (Hugging Face's position_ids under TRL's padding-free packing), what LlamaModel::forward takes
// in ForwardOptions::positions. Header-only: the model checks them, the trainer and validation
// derive them from the separators of pretraining shards, a chat loader writes its own.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

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

// How a token stream marks where its documents begin (--document-boundaries): not at all (each
// window is one sequence); a document ends at each EOS token, which belongs to it, as
// Megatron's reset_position_ids / reset_attention_mask split EOD-separated data; or a document
// starts at each BOS token, which belongs to it, as llm.c's Llama 3 shards (and `minitron
// tokenize` with a tokenizer that has a BOS) mark them.
enum class DocumentBoundaries { None, Eos, Bos };

inline const char* document_boundaries_name(DocumentBoundaries boundaries) {
  switch (boundaries) {
    case DocumentBoundaries::None: return "none";
    case DocumentBoundaries::Eos: return "eos";
    case DocumentBoundaries::Bos: return "bos";
  }
  return "?";
}

inline std::optional<DocumentBoundaries> parse_document_boundaries(std::string_view name) {
  for (DocumentBoundaries b : {DocumentBoundaries::None, DocumentBoundaries::Eos, DocumentBoundaries::Bos})
    if (name == document_boundaries_name(b)) return b;
  return std::nullopt;
}

// The positions of rows of `sequence` tokens cut at `boundaries` (Eos or Bos), whose token is
// any of `ids` (the config's eos_token_id or bos_token_id list): each row starts a document, and
// so does the token after an EOS, or a BOS itself. positions has tokens.size() elements.
inline void document_positions_from_tokens(DocumentBoundaries boundaries, std::span<const std::int64_t> ids,
                                           std::span<const std::int32_t> tokens, std::int64_t sequence,
                                           std::span<std::int32_t> positions) {
  MINITRON_ASSERT(boundaries != DocumentBoundaries::None && sequence > 0 && positions.size() == tokens.size() &&
                  static_cast<std::int64_t>(tokens.size()) % sequence == 0);
  const auto is_boundary = [&](std::int32_t token) {
    for (std::int64_t id : ids)
      if (token == id) return true;
    return false;
  };
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const bool starts = static_cast<std::int64_t>(i) % sequence == 0 ||
                        (boundaries == DocumentBoundaries::Eos ? is_boundary(tokens[i - 1]) : is_boundary(tokens[i]));
    positions[i] = starts ? 0 : positions[i - 1] + 1;
  }
}

}  // namespace minitron
