#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "data/shards.h"
#include "data/tokenize_corpus.h"
#include "tests/data/data_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using testing::TempDir;
using Ids = std::vector<std::uint32_t>;

// A tiny BPE tokenizer.json: characters a b c space newline, one merge "a b" -> "ab", and the
// document markers as added tokens. Hand-derived encodings: "ab c" -> 5 3 2, "c ab" -> 2 3 5,
// "abab" -> 5 5, "cab" -> 2 5.
std::string tiny_tokenizer(const std::string& added_tokens) {
  return R"({"version": "1.0", "added_tokens": [)" + added_tokens + R"(],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "fuse_unk": false, "byte_fallback": false,
              "vocab": {"a": 0, "b": 1, "c": 2, " ": 3, "\n": 4, "ab": 5}, "merges": ["a b"]}})";
}

const char* kBosEos =
    R"({"id": 6, "content": "<|begin_of_text|>", "special": true},
       {"id": 7, "content": "<|end_of_text|>", "special": true})";
const char* kEosOnly = R"({"id": 6, "content": "</s>", "special": true})";

Ids read_ids(const std::filesystem::path& path) {
  const TokenShard shard = TokenShard::open(path);
  return Ids(shard.tokens().begin(), shard.tokens().end());
}

Tokenizer load_tokenizer(const TempDir& dir, const char* added) {
  testing::write_text(dir / "tokenizer.json", tiny_tokenizer(added));
  return Tokenizer::load(dir / "tokenizer.json");
}

TEST(TokenizeCorpus, BosFirstValidationThenFixedSizeTrainShards) {
  TempDir dir;
  const Tokenizer tokenizer = load_tokenizer(dir, kBosEos);
  testing::write_text(dir / "in.txt", "ab c\n\nc ab\n\nabab\n");
  const auto summary = tokenize_to_shards(tokenizer, {dir / "in.txt"},
                                          {.output_prefix = (dir / "out/p").string(),
                                           .shard_tokens = 4,
                                           .validation_tokens = 3,
                                           .split_blank_lines = true});
  EXPECT_EQ(summary.documents, 3);
  EXPECT_EQ(summary.tokens, 11);
  EXPECT_EQ(summary.validation_documents, 1);
  EXPECT_EQ(summary.validation_tokens, 4);  // whole documents: at least 3
  ASSERT_EQ(summary.shards.size(), 3u);
  EXPECT_EQ(read_ids(dir / "out/p_val_000000.bin"), (Ids{6, 5, 3, 2}));
  EXPECT_EQ(read_ids(dir / "out/p_train_000000.bin"), (Ids{6, 2, 3, 5}));
  EXPECT_EQ(read_ids(dir / "out/p_train_000001.bin"), (Ids{6, 5, 5}));
}

TEST(TokenizeCorpus, EosWhenNoBosAndJsonlInput) {
  TempDir dir;
  const Tokenizer tokenizer = load_tokenizer(dir, kEosOnly);
  testing::write_text(dir / "in.jsonl", "{\"text\": \"cab\"}\n{\"text\": \"ab c\"}\n");
  testing::write_text(dir / "more.txt", "c ab");
  tokenize_to_shards(tokenizer, {dir / "in.jsonl", dir / "more.txt"}, {.output_prefix = (dir / "q").string()});
  EXPECT_EQ(read_ids(dir / "q_train_000000.bin"), (Ids{2, 5, 6, 5, 3, 2, 6, 2, 3, 5, 6}));
  EXPECT_FALSE(std::filesystem::exists(dir / "q_val_000000.bin"));
}

TEST(TokenizeCorpus, SameBytesForAnyThreadCount) {
  TempDir dir;
  const Tokenizer tokenizer = load_tokenizer(dir, kBosEos);
  std::string text;
  for (int i = 0; i < 300; ++i) text += std::string(static_cast<std::size_t>(i % 7 + 1), "abc "[i % 4]) + "ab\n\n";
  testing::write_text(dir / "in.txt", text);
  for (int threads : {1, 4}) {
    // (dir / "t1", dir / "t4"; std::string concatenation here trips GCC 12's false -Wrestrict.)
    const std::filesystem::path prefix = dir / (threads == 1 ? "t1" : "t4");
    tokenize_to_shards(tokenizer, {dir / "in.txt"},
                       {.output_prefix = prefix.string(),
                        .shard_tokens = 500,
                        .validation_tokens = 100,
                        .split_blank_lines = true,
                        .threads = threads});
  }
  for (const char* shard : {"_val_000000.bin", "_train_000000.bin", "_train_000001.bin"}) {
    EXPECT_EQ(read_ids(dir / (std::string("t1") + shard)), read_ids(dir / (std::string("t4") + shard))) << shard;
  }
}

TEST(TokenizeCorpus, RemovesStaleShardsOfALongerEarlierRun) {
  TempDir dir;
  const Tokenizer tokenizer = load_tokenizer(dir, kBosEos);
  testing::write_text(dir / "in.txt", "abab cab");
  write_shard(dir / "s_train_000001.bin", std::vector<std::int32_t>{1});
  write_shard(dir / "s_train_000002.bin", std::vector<std::int32_t>{1});
  const auto summary = tokenize_to_shards(tokenizer, {dir / "in.txt"}, {.output_prefix = (dir / "s").string()});
  EXPECT_EQ(summary.removed_stale.size(), 2u);
  EXPECT_TRUE(std::filesystem::exists(dir / "s_train_000000.bin"));
  EXPECT_FALSE(std::filesystem::exists(dir / "s_train_000001.bin"));
}

TEST(TokenizeCorpus, ClearErrors) {
  TempDir dir;
  const Tokenizer tokenizer = load_tokenizer(dir, kBosEos);
  testing::write_text(dir / "in.txt", "ab");
  testing::write_text(dir / "empty.txt", "\n\n");
  EXPECT_THROW(tokenize_to_shards(tokenizer, {dir / "missing.txt"}, {.output_prefix = (dir / "e").string()}), Error);
  EXPECT_THROW(tokenize_to_shards(tokenizer, {dir / "empty.txt"}, {.output_prefix = (dir / "e").string()}), Error);
  // Every token would go to validation: no training data would remain.
  EXPECT_THROW(tokenize_to_shards(tokenizer, {dir / "in.txt"},
                                  {.output_prefix = (dir / "e").string(), .validation_tokens = 100}),
               Error);
  const Tokenizer no_markers = load_tokenizer(dir, "");
  EXPECT_THROW(tokenize_to_shards(no_markers, {dir / "in.txt"}, {.output_prefix = (dir / "e").string()}), Error);
}

}  // namespace
}  // namespace minitron
