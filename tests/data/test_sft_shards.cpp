// SFT shards (tokens, document starts, loss mask): the bytes written, every refusal on open, and
// the windows the loaders make of them (masked and cross-document targets -1, positions within
// documents), with expected values written by hand.
#include <cstring>
#include <fstream>
#include <vector>

#include <gtest/gtest.h>

#include "data/dataloader.h"
#include "data/shards.h"
#include "tests/data/data_test_util.h"
#include "util/error.h"

namespace minitron {
namespace {

using testing::expect_error;
using testing::TempDir;

// An SFT shard written byte by byte, independently of write_sft_shard, so corruptions can be made.
void write_raw_sft(const std::filesystem::path& path, std::vector<std::int32_t> header_head,
                   const std::vector<std::uint32_t>& tokens, const std::vector<std::uint32_t>& starts,
                   const std::vector<std::uint8_t>& mask) {
  std::vector<std::int32_t> header(256, 0);
  std::copy(header_head.begin(), header_head.end(), header.begin());
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header.data()), 1024);
  out.write(reinterpret_cast<const char*>(tokens.data()), static_cast<std::streamsize>(tokens.size() * 4));
  out.write(reinterpret_cast<const char*>(starts.data()), static_cast<std::streamsize>(starts.size() * 4));
  out.write(reinterpret_cast<const char*>(mask.data()), static_cast<std::streamsize>(mask.size()));
}

TEST(SftShards, WriterBytesAreTheDocumentedLayout) {
  TempDir dir;
  const std::vector<std::int32_t> tokens = {7, 8, 9, 70000, 5};
  const std::vector<std::uint8_t> mask = {0, 1, 1, 0, 1};
  const std::vector<std::int64_t> starts = {0, 3};
  write_sft_shard(dir / "s.bin", tokens, mask, starts);
  std::ifstream in(dir / "s.bin", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_EQ(bytes.size(), 1024u + 5 * 4 + 2 * 4 + 5);
  std::int32_t header[256];
  std::memcpy(header, bytes.data(), 1024);
  EXPECT_EQ(header[0], 20261205);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 5);
  EXPECT_EQ(header[3], 2);
  for (int i = 4; i < 256; ++i) EXPECT_EQ(header[i], 0) << i;
  std::uint32_t body[7];
  std::memcpy(body, bytes.data() + 1024, sizeof body);
  EXPECT_EQ(body[3], 70000u);
  EXPECT_EQ(body[5], 0u);
  EXPECT_EQ(body[6], 3u);
  EXPECT_EQ(std::vector<char>(bytes.end() - 5, bytes.end()), (std::vector<char>{0, 1, 1, 0, 1}));
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);  // no temporary left

  const TokenShard shard = TokenShard::open(dir / "s.bin", 70001);
  EXPECT_EQ(shard.kind(), ShardKind::Sft);
  EXPECT_EQ(shard.size(), 5);
  EXPECT_EQ(std::vector<std::uint8_t>(shard.loss_mask().begin(), shard.loss_mask().end()), mask);
  EXPECT_EQ(std::vector<std::uint32_t>(shard.document_starts().begin(), shard.document_starts().end()),
            (std::vector<std::uint32_t>{0, 3}));
  expect_error([&] { TokenShard::open(dir / "s.bin", 70000); }, {"token 3 has id 70000", "below the vocab size"});
}

TEST(SftShards, WriterRefusesWrongMasksAndStarts) {
  TempDir dir;
  const std::vector<std::int32_t> tokens = {1, 2, 3};
  const std::vector<std::uint8_t> ok_mask = {0, 1, 1};
  expect_error(
      [&] {
        write_sft_shard(dir / "a.bin", tokens, std::vector<std::uint8_t>{0, 1}, std::vector<std::int64_t>{0});
      },
      {"2 loss-mask values for 3 tokens"});
  expect_error(
      [&] {
        write_sft_shard(dir / "a.bin", tokens, std::vector<std::uint8_t>{0, 2, 1}, std::vector<std::int64_t>{0});
      },
      {"loss-mask value 1 is 2", "0 or 1"});
  expect_error([&] { write_sft_shard(dir / "a.bin", tokens, ok_mask, std::vector<std::int64_t>{1}); },
               {"does not start at token 0"});
  expect_error(
      [&] {
        write_sft_shard(dir / "a.bin", tokens, ok_mask, std::vector<std::int64_t>{0, 2, 2});
      },
      {"document start 2 is 2 after 2"});
  expect_error(
      [&] {
        write_sft_shard(dir / "a.bin", tokens, ok_mask, std::vector<std::int64_t>{0, 3});
      },
      {"document start 1 is 3", "below the token count 3"});
  EXPECT_FALSE(std::filesystem::exists(dir / "a.bin"));
}

TEST(SftShards, OpenRefusesEveryCorruption) {
  TempDir dir;
  const std::vector<std::uint32_t> tokens = {1, 2, 3, 4};
  write_raw_sft(dir / "version.bin", {20261205, 2, 4, 1}, tokens, {0}, {0, 1, 1, 1});
  expect_error([&] { TokenShard::open(dir / "version.bin"); }, {"SFT shard version is 2", "version 1"});
  write_raw_sft(dir / "short.bin", {20261205, 1, 4, 1}, tokens, {0}, {0, 1, 1});
  expect_error([&] { TokenShard::open(dir / "short.bin"); },
               {"header says 4 tokens and 1 documents but the file holds 23 bytes", "24 bytes", "truncated"});
  write_raw_sft(dir / "counts.bin", {20261205, 1, 4, 5}, tokens, {0, 1, 2, 3, 3}, {0, 1, 1, 1});
  expect_error([&] { TokenShard::open(dir / "counts.bin"); }, {"document count 5"});
  write_raw_sft(dir / "nodoc.bin", {20261205, 1, 4, 0}, tokens, {}, {0, 1, 1, 1});
  expect_error([&] { TokenShard::open(dir / "nodoc.bin"); }, {"document count 0", "at least one document"});
  write_raw_sft(dir / "mask.bin", {20261205, 1, 4, 1}, tokens, {0}, {0, 1, 7, 1});
  expect_error([&] { TokenShard::open(dir / "mask.bin"); }, {"mask.bin", "loss-mask value 2 is 7"});
  write_raw_sft(dir / "first.bin", {20261205, 1, 4, 2}, tokens, {1, 2}, {0, 1, 1, 1});
  expect_error([&] { TokenShard::open(dir / "first.bin"); }, {"the first document starts at token 1"});
  write_raw_sft(dir / "order.bin", {20261205, 1, 4, 3}, tokens, {0, 2, 1}, {0, 1, 1, 1});
  expect_error([&] { TokenShard::open(dir / "order.bin"); }, {"document start 2 is 1 after 2"});
  write_raw_sft(dir / "range.bin", {20261205, 1, 4, 2}, tokens, {0, 4}, {0, 1, 1, 1});
  expect_error([&] { TokenShard::open(dir / "range.bin"); }, {"document start 1 is 4", "below the token count 4"});
}

// Tokens 100..110, documents starting at 0, 3 and 7, loss mask as written; T = 4 gives windows
// [0..4] and [4..8] (inputs the first 4 tokens, targets the next 4).
TEST(SftShards, WindowsMaskTargetsAcrossDocumentsAndRestartPositions) {
  TempDir dir;
  std::vector<std::int32_t> tokens(11);
  for (int i = 0; i < 11; ++i) tokens[i] = 100 + i;
  const std::vector<std::uint8_t> mask = {0, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1};
  write_sft_shard(dir / "s.bin", tokens, mask, std::vector<std::int64_t>{0, 3, 7});
  EvalLoader loader({dir / "s.bin"}, 2, 4);
  std::vector<std::int32_t> inputs(8), targets(8), positions(8);
  ASSERT_EQ(loader.next(inputs, targets, positions), 2);
  EXPECT_EQ(inputs, (std::vector<std::int32_t>{100, 101, 102, 103, 104, 105, 106, 107}));
  // Window 0: targets 101 (mask 1), 102 (1), 103 (starts a document), 104 (mask 0).
  // Window 1: targets 105 (1), 106 (1), 107 (starts a document), 108 (1).
  EXPECT_EQ(targets, (std::vector<std::int32_t>{101, 102, -1, -1, 105, 106, -1, 108}));
  // Window 1 begins inside the document that starts at token 3: its positions count from the
  // window's start (the model takes each row as starting a document).
  EXPECT_EQ(positions, (std::vector<std::int32_t>{0, 1, 2, 0, 0, 1, 2, 0}));

  // The training loader gives the same windows (in its shuffled order).
  TrainLoaderOptions options;
  options.batch_size = 1;
  options.sequence_length = 4;
  TrainLoader train({dir / "s.bin"}, options);
  std::vector<std::int32_t> in1(4), tg1(4), pos1(4);
  train.next(in1, tg1, pos1);
  const bool first = in1[0] == 100;
  EXPECT_EQ(tg1,
            first ? (std::vector<std::int32_t>{101, 102, -1, -1}) : (std::vector<std::int32_t>{105, 106, -1, 108}));
  EXPECT_EQ(pos1, (std::vector<std::int32_t>{0, 1, 2, 0}));  // both windows, as above
}

TEST(SftShards, TokenShardWindowsAreUnchangedAndKindsDoNotMix) {
  TempDir dir;
  write_shard(dir / "t.bin", std::vector<std::int32_t>{1, 2, 3, 4, 5});
  EvalLoader loader({dir / "t.bin"}, 1, 4);
  std::vector<std::int32_t> inputs(4), targets(4), positions(4);
  ASSERT_EQ(loader.next(inputs, targets, positions), 1);
  EXPECT_EQ(targets, (std::vector<std::int32_t>{2, 3, 4, 5}));
  EXPECT_EQ(positions, (std::vector<std::int32_t>{0, 1, 2, 3}));
  write_sft_shard(dir / "s.bin", std::vector<std::int32_t>{1, 2, 3, 4, 5}, std::vector<std::uint8_t>{1, 1, 1, 1, 1},
                  std::vector<std::int64_t>{0});
  expect_error(
      [&] {
        TokenWindows({dir / "t.bin", dir / "s.bin"}, 4);
      },
      {"s.bin", "'SFT shard'", "'token shard'", "shards of one kind"});
}

}  // namespace
}  // namespace minitron
