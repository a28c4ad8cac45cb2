// Token shards in llm.c's Llama-3 format, so llm.c's data scripts and ours are interchangeable:
// a header of 256 int32 ([0] = 20240801 magic, [1] = 7 version, [2] = token count), then the
// tokens as uint32, documents separated by the tokenizer's BOS (or EOS) token.
//
// Supervised fine-tuning (SFT) shards, minitron's own kind, carry beside the tokens which of them
// the loss counts and where each document starts (data/README.md): a header of 256 int32
// ([0] = 20261205 magic, [1] = 1 version, [2] = token count n, [3] = document count d, the rest
// 0), then n uint32 tokens, d uint32 document start offsets (the first 0, strictly increasing,
// below n) and n uint8 loss-mask bytes (1: the loss counts the token as a target, 0: it does not).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "util/files.h"

namespace minitron {

inline constexpr std::int32_t kShardMagic = 20240801;
inline constexpr std::int32_t kShardVersion = 7;
inline constexpr std::int64_t kShardHeaderInts = 256;
inline constexpr std::int64_t kShardHeaderBytes = kShardHeaderInts * 4;
// The header stores the count in one int32.
inline constexpr std::int64_t kShardMaxTokens = 2147483647;

inline constexpr std::int32_t kSftShardMagic = 20261205;
inline constexpr std::int32_t kSftShardVersion = 1;

enum class ShardKind { Tokens, Sft };
const char* shard_kind_name(ShardKind kind);  // "token shard", "SFT shard"

// Writes a shard atomically (temporary name, then rename). Ids must be non-negative; the count
// must fit the header's int32.
void write_shard(const std::filesystem::path& path, std::span<const std::int32_t> tokens);

// Writes an SFT shard atomically: tokens, one loss-mask value (0 or 1) per token, and the
// offsets where documents start (empty for no tokens, else first 0, strictly increasing, below
// the token count). Refuses anything else naming the path and the first wrong value.
void write_sft_shard(const std::filesystem::path& path, std::span<const std::int32_t> tokens,
                     std::span<const std::uint8_t> loss_mask, std::span<const std::int64_t> document_starts);

// A memory-mapped, validated shard of either kind. Opening checks magic, version and that the
// header's counts match the file size, and for an SFT shard that the mask holds only 0 and 1 and
// the document starts are ordered and in range; with a vocab size it also checks every id is
// below it.
class TokenShard {
 public:
  static TokenShard open(const std::filesystem::path& path, std::optional<std::int64_t> vocab_size = std::nullopt);

  const std::filesystem::path& path() const { return file_.path(); }
  ShardKind kind() const { return kind_; }
  std::int64_t size() const { return count_; }
  std::span<const std::uint32_t> tokens() const { return {tokens_, static_cast<std::size_t>(count_)}; }
  // SFT shards only (empty for token shards).
  std::span<const std::uint8_t> loss_mask() const {
    return {loss_mask_, kind_ == ShardKind::Sft ? static_cast<std::size_t>(count_) : 0};
  }
  std::span<const std::uint32_t> document_starts() const {
    return {document_starts_, static_cast<std::size_t>(documents_)};
  }

 private:
  MappedFile file_;
  ShardKind kind_ = ShardKind::Tokens;
  const std::uint32_t* tokens_ = nullptr;
  const std::uint32_t* document_starts_ = nullptr;
  const std::uint8_t* loss_mask_ = nullptr;
  std::int64_t count_ = 0, documents_ = 0;
};

// A shard specification as users write it: one file, a glob pattern (llm.c style
// "dir/name_train_*.bin"), a directory (all *.bin inside), or a comma-separated list of those.
// Each glob's or directory's matches are sorted by name; list items keep the order given.
// Fails when an item matches nothing.
std::vector<std::filesystem::path> resolve_shards(const std::string& spec);

}  // namespace minitron
