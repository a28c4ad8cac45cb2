// The internals of minitron::Tokenizer: the parsed tokenizer.json pipeline (added tokens,
// normalizer, pre-tokenizer, BPE model, post-processor, decoder) and the pre-token cache.
// Shared by tokenizer.cpp (encode/decode) and tokenizer_load.cpp (tokenizer.json parsing).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/tokenizer.h"
#include "data/tokenizer_regex.h"

namespace minitron {

// Hashing for heterogeneous (string_view) lookups in string-keyed maps.
struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using StringIdMap = std::unordered_map<std::string, std::int32_t, StringHash, std::equal_to<>>;

struct AddedToken {
  std::string content;
  std::int32_t id = 0;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;
};

struct NormalizerStep {
  enum class Kind { kPrepend, kReplace, kStrip } kind;
  std::string text;                       // Prepend: the prefix; Replace: the literal pattern
  std::string content;                    // Replace: the replacement
  std::shared_ptr<TokenizerRegex> regex;  // Replace with a Regex pattern
  bool strip_left = false, strip_right = false;
};

enum class SplitBehavior { kIsolated, kRemoved, kMergedWithPrevious, kMergedWithNext, kContiguous };

struct PreTokenizerStep {
  enum class Kind { kSplit, kMetaspace, kByteLevel } kind;
  std::shared_ptr<TokenizerRegex> regex;  // Split (Regex or escaped String), ByteLevel use_regex
  std::string literal;                    // Split with a String pattern
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;
  std::string replacement;  // Metaspace
  enum class Prepend { kAlways, kFirst, kNever } prepend_scheme = Prepend::kAlways;
  bool split = false;             // Metaspace
  bool add_prefix_space = false;  // ByteLevel
};

struct DecoderStep {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace } kind;
  std::string pattern, content;  // Replace; Strip content; Metaspace replacement
  int start = 0, stop = 0;       // Strip
  bool prepend = true;           // Metaspace: drop the replacement chars of the first token
};

// A bounded map pre-token -> ids, sharded by hash so that threads encoding in parallel rarely
// contend. When a shard is full it is cleared: cheap, and English text refills it at once.
class PreTokenCache {
 public:
  static constexpr std::size_t kShards = 64;
  static constexpr std::size_t kShardCapacity = 4096;
  static constexpr std::size_t kMaxKeyBytes = 64;

  bool lookup(std::string_view key, std::size_t hash, std::vector<std::int32_t>& out);
  void insert(std::string_view key, std::size_t hash, const std::int32_t* ids, std::size_t n);

 private:
  struct Shard {
    std::mutex mutex;
    std::unordered_map<std::string, std::vector<std::int32_t>, StringHash, std::equal_to<>> map;
  };
  std::array<Shard, kShards> shards_;
};

struct MergeRule {
  std::int32_t rank;
  std::int32_t merged_id;
};

struct Tokenizer::Impl {
  // Model (BPE).
  StringIdMap vocab;                                    // model vocab and added tokens, by token string
  std::vector<std::string> id_to_token;                 // size vocab_size; "" where no token has the id
  std::unordered_map<std::uint64_t, MergeRule> merges;  // (left id << 32 | right id) -> rule
  std::optional<std::int32_t> unk_id;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  std::array<std::int32_t, 256> byte_fallback_ids{};  // <0xNN>, -1 when absent

  // Byte-level: the pre-tokens stay raw bytes; each byte starts as the id of its mapped char.
  bool byte_level = false;
  std::array<std::int32_t, 256> byte_ids{};
  StringIdMap byte_vocab;  // raw bytes of every byte-level vocab entry -> id (ignore_merges)

  std::vector<AddedToken> added;  // sorted longest content first
  std::array<bool, 256> added_first_byte{};
  std::vector<bool> is_special;  // by id

  std::vector<NormalizerStep> normalizer;
  std::vector<PreTokenizerStep> pre_tokenizer;
  std::vector<DecoderStep> decoder;
  bool has_decoder = false;
  std::vector<std::int32_t> prefix_ids, suffix_ids;  // post-processor, single sequence

  std::optional<std::int32_t> bos, eos;
  std::vector<std::string> id_bytes;  // ByteLevel-decoded bytes of each id (byte-level only)

  mutable PreTokenCache cache;

  static std::unique_ptr<Impl> from_json_text(const std::string& text, const std::string& what);
  void encode_piece(std::string_view piece, std::vector<std::int32_t>& out) const;
  void bpe(std::string_view piece, std::vector<std::int32_t>& out) const;
  void encode_segment(std::string_view segment, bool at_text_start, std::vector<std::int32_t>& out) const;
};

}  // namespace minitron

namespace minitron {
// The bytes the ByteLevel decoder turns `token` into (GPT-2 table; the token itself when it
// holds a character outside the table).
std::string tokenizer_byte_level_bytes(const std::string& token);
}  // namespace minitron
