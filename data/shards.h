// Token shards in llm.c's Llama-3 format, so llm.c's data scripts and ours are interchangeable:
// a header of 256 int32 ([0] = 20240801 magic, [1] = 7 version, [2] = token count), then the
// tokens as uint32, documents separated by the tokenizer's BOS (or EOS) token.
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

// Writes a shard atomically (temporary name, then rename). Ids must be non-negative; the count
// must fit the header's int32.
void write_shard(const std::filesystem::path& path, std::span<const std::int32_t> tokens);

// A memory-mapped, validated shard. Opening checks magic, version and that the header's count
// matches the file size; with a vocab size it also checks every id is below it.
class TokenShard {
 public:
  static TokenShard open(const std::filesystem::path& path, std::optional<std::int64_t> vocab_size = std::nullopt);

  const std::filesystem::path& path() const { return file_.path(); }
  std::int64_t size() const { return count_; }
  std::span<const std::uint32_t> tokens() const { return {tokens_, static_cast<std::size_t>(count_)}; }

 private:
  MappedFile file_;
  const std::uint32_t* tokens_ = nullptr;
  std::int64_t count_ = 0;
};

// A shard specification as users write it: one file, a glob pattern (llm.c style
// "dir/name_train_*.bin"), a directory (all *.bin inside), or a comma-separated list of those.
// Each glob's or directory's matches are sorted by name; list items keep the order given.
// Fails when an item matches nothing.
std::vector<std::filesystem::path> resolve_shards(const std::string& spec);

}  // namespace minitron
