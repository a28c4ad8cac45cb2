#include <cstring>
#include <fstream>
#include <vector>

#include <gtest/gtest.h>

#include "data/shards.h"
#include "tests/data/data_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using testing::expect_error;
using testing::TempDir;
using testing::write_raw_shard;

TEST(Shards, WriterProducesLlmcBytes) {
  TempDir dir;
  const std::vector<std::int32_t> tokens = {128000, 5, 0, 70000};
  write_shard(dir / "a.bin", tokens);
  std::ifstream in(dir / "a.bin", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(bytes.size(), 1024u + 16u);
  std::int32_t header[256];
  std::memcpy(header, bytes.data(), 1024);
  EXPECT_EQ(header[0], 20240801);
  EXPECT_EQ(header[1], 7);
  EXPECT_EQ(header[2], 4);
  for (int i = 3; i < 256; ++i) EXPECT_EQ(header[i], 0) << i;
  std::uint32_t body[4];
  std::memcpy(body, bytes.data() + 1024, 16);
  EXPECT_EQ(body[0], 128000u);
  EXPECT_EQ(body[3], 70000u);
  // No temporary file is left beside the shard.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
}

TEST(Shards, RoundTrip) {
  TempDir dir;
  std::vector<std::int32_t> tokens(1000);
  for (int i = 0; i < 1000; ++i) tokens[i] = (i * 7919) % 50000;
  write_shard(dir / "r.bin", tokens);
  const TokenShard shard = TokenShard::open(dir / "r.bin", 50000);
  ASSERT_EQ(shard.size(), 1000);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(shard.tokens()[i], static_cast<std::uint32_t>(tokens[i]));
}

TEST(Shards, EmptyShardIsValid) {
  TempDir dir;
  write_shard(dir / "e.bin", {});
  EXPECT_EQ(TokenShard::open(dir / "e.bin").size(), 0);
}

TEST(Shards, WriterRejectsNegativeIds) {
  TempDir dir;
  const std::vector<std::int32_t> tokens = {1, -2};
  expect_error([&] { write_shard(dir / "n.bin", tokens); }, {"n.bin", "token 1", "-2", "non-negative"});
  EXPECT_FALSE(std::filesystem::exists(dir / "n.bin"));
}

TEST(Shards, BadMagic) {
  TempDir dir;
  write_raw_shard(dir / "m.bin", 12345, 7, 2, {1, 2});
  expect_error([&] { TokenShard::open(dir / "m.bin"); }, {"m.bin", "magic number is 12345", "20240801"});
  write_raw_shard(dir / "gpt2.bin", 20240520, 1, 2, {1, 2});
  expect_error([&] { TokenShard::open(dir / "gpt2.bin"); }, {"gpt2.bin", "GPT-2"});
}

TEST(Shards, BadVersion) {
  TempDir dir;
  write_raw_shard(dir / "v.bin", 20240801, 1, 2, {1, 2});
  expect_error([&] { TokenShard::open(dir / "v.bin"); }, {"v.bin", "version is 1", "version 7"});
}

TEST(Shards, CountLargerThanFile) {
  TempDir dir;
  write_raw_shard(dir / "c.bin", 20240801, 7, 10, {1, 2, 3});
  expect_error([&] { TokenShard::open(dir / "c.bin"); }, {"c.bin", "header says 10 tokens", "12 bytes", "40 bytes"});
}

TEST(Shards, TruncatedHeaderAndOddPayload) {
  TempDir dir;
  testing::write_text(dir / "short.bin", std::string(100, '\0'));
  expect_error([&] { TokenShard::open(dir / "short.bin"); }, {"short.bin", "100 bytes", "1024-byte header"});
  write_raw_shard(dir / "odd.bin", 20240801, 7, 2, {1, 2});
  std::filesystem::resize_file(dir / "odd.bin", 1024 + 7);
  expect_error([&] { TokenShard::open(dir / "odd.bin"); }, {"odd.bin", "header says 2 tokens", "7 bytes"});
}

TEST(Shards, IdAtOrAboveVocab) {
  TempDir dir;
  write_raw_shard(dir / "id.bin", 20240801, 7, 4, {0, 99, 100, 3});
  EXPECT_NO_THROW(TokenShard::open(dir / "id.bin", 101));
  expect_error([&] { TokenShard::open(dir / "id.bin", 100); },
               {"id.bin", "token 2 has id 100", "below the vocab size 100"});
}

TEST(Shards, MissingFile) {
  TempDir dir;
  expect_error([&] { TokenShard::open(dir / "absent.bin"); }, {"absent.bin"});
}

TEST(Shards, ResolveFileGlobDirectoryAndList) {
  TempDir dir;
  for (const char* name : {"x_train_000002.bin", "x_train_000000.bin", "x_train_000001.bin", "x_val_000000.bin"})
    write_shard(dir / name, std::vector<std::int32_t>{1});
  const auto globbed = resolve_shards((dir / "x_train_*.bin").string());
  ASSERT_EQ(globbed.size(), 3u);
  EXPECT_EQ(globbed[0].filename(), "x_train_000000.bin");
  EXPECT_EQ(globbed[2].filename(), "x_train_000002.bin");

  const auto one = resolve_shards((dir / "x_val_000000.bin").string());
  ASSERT_EQ(one.size(), 1u);

  const auto list =
      resolve_shards((dir / "x_val_000000.bin").string() + "," + (dir / "x_train_00000[01].bin").string());
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].filename(), "x_val_000000.bin");
  EXPECT_EQ(list[1].filename(), "x_train_000000.bin");

  EXPECT_EQ(resolve_shards(dir.path().string()).size(), 4u);

  expect_error([&] { resolve_shards((dir / "y_*.bin").string()); }, {"y_*.bin", "matches no file"});
  expect_error([&] { resolve_shards((dir / "nothing.bin").string()); }, {"nothing.bin", "no such file"});
  expect_error([&] { resolve_shards(""); }, {"empty"});
}

}  // namespace
}  // namespace minitron
