#include "data/shards.h"

#include <glob.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <vector>

#include "util/error.h"

namespace minitron {

namespace fs = std::filesystem;

static void check_token_ids(const fs::path& path, std::span<const std::int32_t> tokens);

void write_shard(const fs::path& path, std::span<const std::int32_t> tokens) {
  check_token_ids(path, tokens);
  const auto count = static_cast<std::int64_t>(tokens.size());
  std::array<std::int32_t, kShardHeaderInts> header{};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = static_cast<std::int32_t>(count);
  write_file_atomically(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail_expected(tmp.string(), "cannot create file", "a writable directory");
    // int32 ids >= 0 have the same bytes as the uint32 the format stores.
    out.write(reinterpret_cast<const char*>(header.data()), kShardHeaderBytes);
    out.write(reinterpret_cast<const char*>(tokens.data()),
              static_cast<std::streamsize>(tokens.size() * sizeof(std::int32_t)));
    out.flush();
    if (!out) fail(str(tmp.string(), ": write failed (disk full?)"));
  });
}

const char* shard_kind_name(ShardKind kind) { return kind == ShardKind::Sft ? "SFT shard" : "token shard"; }

static void check_token_ids(const fs::path& path, std::span<const std::int32_t> tokens) {
  const auto count = static_cast<std::int64_t>(tokens.size());
  if (count > kShardMaxTokens)
    fail_expected(path.string(), str(count, " tokens do not fit one shard"),
                  str("at most ", kShardMaxTokens, " tokens (the header's count is an int32)"));
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0)
      fail_expected(path.string(), str("token ", i, " has the negative id ", tokens[i]), "non-negative token ids");
}

void write_sft_shard(const fs::path& path, std::span<const std::int32_t> tokens,
                     std::span<const std::uint8_t> loss_mask, std::span<const std::int64_t> document_starts) {
  check_token_ids(path, tokens);
  const auto count = static_cast<std::int64_t>(tokens.size());
  if (loss_mask.size() != tokens.size())
    fail_expected(path.string(), str(loss_mask.size(), " loss-mask values for ", count, " tokens"),
                  "one loss-mask value per token");
  for (std::size_t i = 0; i < loss_mask.size(); ++i)
    if (loss_mask[i] > 1) fail_expected(path.string(), str("loss-mask value ", i, " is ", int(loss_mask[i])), "0 or 1");
  if (count > 0 && (document_starts.empty() || document_starts[0] != 0))
    fail_expected(path.string(), "the first document does not start at token 0", "document starts beginning with 0");
  if (count == 0 && !document_starts.empty())
    fail_expected(path.string(), str(document_starts.size(), " documents but no token"), "no document start");
  for (std::size_t i = 1; i < document_starts.size(); ++i)
    if (document_starts[i] <= document_starts[i - 1] || document_starts[i] >= count)
      fail_expected(path.string(),
                    str("document start ", i, " is ", document_starts[i], " after ", document_starts[i - 1]),
                    str("strictly increasing starts below the token count ", count));
  std::array<std::int32_t, kShardHeaderInts> header{};
  header[0] = kSftShardMagic;
  header[1] = kSftShardVersion;
  header[2] = static_cast<std::int32_t>(count);
  header[3] = static_cast<std::int32_t>(document_starts.size());
  std::vector<std::uint32_t> starts(document_starts.begin(), document_starts.end());
  write_file_atomically(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail_expected(tmp.string(), "cannot create file", "a writable directory");
    out.write(reinterpret_cast<const char*>(header.data()), kShardHeaderBytes);
    out.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 4));
    out.write(reinterpret_cast<const char*>(starts.data()), static_cast<std::streamsize>(starts.size() * 4));
    out.write(reinterpret_cast<const char*>(loss_mask.data()), static_cast<std::streamsize>(loss_mask.size()));
    out.flush();
    if (!out) fail(str(tmp.string(), ": write failed (disk full?)"));
  });
}

TokenShard TokenShard::open(const fs::path& path, std::optional<std::int64_t> vocab_size) {
  TokenShard shard;
  shard.file_ = MappedFile(path);
  const std::string name = path.string();
  const auto bytes = static_cast<std::int64_t>(shard.file_.size());
  if (bytes < kShardHeaderBytes)
    fail_expected(name, str("file is ", bytes, " bytes, shorter than the shard header"),
                  str("an llm.c token shard: a ", kShardHeaderBytes, "-byte header, then tokens"));
  std::array<std::int32_t, 4> head{};
  std::memcpy(head.data(), shard.file_.data(), sizeof(head));
  const std::int64_t payload = bytes - kShardHeaderBytes;
  const std::int64_t count = head[2];
  if (head[0] == kSftShardMagic) {
    shard.kind_ = ShardKind::Sft;
    if (head[1] != kSftShardVersion)
      fail_expected(name, str("SFT shard version is ", head[1]),
                    str("version ", kSftShardVersion, " (tokens, document starts, loss mask; data/README.md)"));
    const std::int64_t documents = head[3];
    if (count < 0 || documents < 0 || documents > count || (count > 0 && documents == 0))
      fail_expected(name, str("header's token count is ", count, " and document count ", documents),
                    "non-negative counts, at least one document when there are tokens and at most one per token");
    const std::int64_t expected = count * 4 + documents * 4 + count;
    if (payload != expected)
      fail_expected(name,
                    str("header says ", count, " tokens and ", documents, " documents but the file holds ", payload,
                        " bytes after the header"),
                    str(expected,
                        " bytes (4 per token, 4 per document start, 1 per loss-mask value); the file is "
                        "truncated or corrupt"));
    shard.count_ = count;
    shard.documents_ = documents;
    shard.tokens_ = reinterpret_cast<const std::uint32_t*>(shard.file_.data() + kShardHeaderBytes);
    shard.document_starts_ = shard.tokens_ + count;
    shard.loss_mask_ = reinterpret_cast<const std::uint8_t*>(shard.document_starts_ + documents);
    for (std::int64_t i = 0; i < count; ++i)
      if (shard.loss_mask_[i] > 1)
        fail_expected(name, str("loss-mask value ", i, " is ", int(shard.loss_mask_[i])), "0 or 1");
    const std::uint32_t* starts = shard.document_starts_;
    if (documents > 0 && starts[0] != 0)
      fail_expected(name, str("the first document starts at token ", starts[0]), "0");
    for (std::int64_t i = 1; i < documents; ++i)
      if (starts[i] <= starts[i - 1] || starts[i] >= static_cast<std::uint64_t>(count))
        fail_expected(name, str("document start ", i, " is ", starts[i], " after ", starts[i - 1]),
                      str("strictly increasing starts below the token count ", count));
  } else {
    if (head[0] != kShardMagic)
      fail_expected(name, str("magic number is ", head[0]),
                    str(kShardMagic, ", an llm.c Llama-3 token shard (or ", kSftShardMagic, ", an SFT shard)",
                        head[0] == 20240520 ? "; this is an llm.c GPT-2 shard with uint16 tokens" : ""));
    if (head[1] != kShardVersion)
      fail_expected(name, str("version is ", head[1]),
                    str("version ", kShardVersion, " (uint32 tokens, llm.c Llama-3 format)"));
    if (count < 0) fail_expected(name, str("header's token count is ", count), "a non-negative count");
    if (payload != count * 4)
      fail_expected(name, str("header says ", count, " tokens but the file holds ", payload, " bytes after the header"),
                    str(count * 4, " bytes (4 per token); the file is truncated or corrupt"));
    shard.count_ = count;
    shard.tokens_ = reinterpret_cast<const std::uint32_t*>(shard.file_.data() + kShardHeaderBytes);
  }
  if (vocab_size) {
    const auto limit = static_cast<std::uint64_t>(*vocab_size);
    for (std::int64_t i = 0; i < count; ++i)
      if (shard.tokens_[i] >= limit)
        fail_expected(name, str("token ", i, " has id ", shard.tokens_[i]),
                      str("ids below the vocab size ", *vocab_size));
  }
  return shard;
}

static bool has_glob_characters(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

static std::vector<fs::path> expand_glob(const std::string& pattern) {
  glob_t matches{};
  const int rc = ::glob(pattern.c_str(), GLOB_ERR, nullptr, &matches);
  std::vector<fs::path> out;
  if (rc == 0)
    for (std::size_t i = 0; i < matches.gl_pathc; ++i) out.emplace_back(matches.gl_pathv[i]);
  ::globfree(&matches);
  if (rc != 0 && rc != GLOB_NOMATCH) fail(str(pattern, ": cannot expand the pattern (glob error ", rc, ")"));
  return out;
}

std::vector<fs::path> resolve_shards(const std::string& spec) {
  std::vector<fs::path> out;
  std::size_t begin = 0;
  bool any_item = false;
  while (begin <= spec.size()) {
    std::size_t end = spec.find(',', begin);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(begin, end - begin);
    begin = end + 1;
    if (item.empty()) continue;
    any_item = true;
    std::vector<fs::path> found;
    if (has_glob_characters(item)) {
      found = expand_glob(item);
      if (found.empty()) fail_expected(item, "the pattern matches no file", "at least one token shard");
    } else if (fs::is_directory(item)) {
      for (const auto& entry : fs::directory_iterator(item))
        if (entry.is_regular_file() && entry.path().extension() == ".bin") found.push_back(entry.path());
      if (found.empty()) fail_expected(item, "the directory holds no .bin file", "token shards (*.bin)");
    } else {
      if (!fs::exists(item)) fail_expected(item, "no such file", "a token shard, a glob pattern or a directory");
      found.emplace_back(item);
    }
    std::sort(found.begin(), found.end());
    out.insert(out.end(), found.begin(), found.end());
  }
  if (!any_item) fail_expected("shard list", "it is empty", "a file, a glob pattern, or a comma-separated list");
  return out;
}

}  // namespace minitron
