// shard_bounds and check_shard_bounds (dist/communicator.h): the parts of the flat parameter
// vector that the ranks of a ZeRO-1 optimizer own. Hand-worked partitions, the stated
// properties checked by a loop of the test's own over many sizes, and the refusals with their
// exact messages.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "tests/util/error_test_util.h"

namespace minitron {
namespace {

using Bounds = std::vector<std::int64_t>;
using testing::error_of;

TEST(ShardBounds, HandWorkedPartitions) {
  // 200 / (64 x 3) = 1 block of 64 each; the last rank takes 200 - 128 = 72.
  EXPECT_EQ(shard_bounds(200, 3), (Bounds{0, 64, 128, 200}));
  // 384 = 2 blocks of 64 for each of 3 ranks: equal parts.
  EXPECT_EQ(shard_bounds(384, 3), (Bounds{0, 128, 256, 384}));
  // Shorter than 64 x 3: no whole block per rank, so all of it is the last rank's.
  EXPECT_EQ(shard_bounds(100, 3), (Bounds{0, 0, 0, 100}));
  EXPECT_EQ(shard_bounds(0, 2), (Bounds{0, 0, 0}));
  EXPECT_EQ(shard_bounds(1000, 1), (Bounds{0, 1000}));
  // 64 x 2 - 1: one element short of a block each.
  EXPECT_EQ(shard_bounds(127, 2), (Bounds{0, 0, 127}));
  EXPECT_EQ(shard_bounds(128, 2), (Bounds{0, 64, 128}));
  // 1000 / 256 = 3 blocks (192 elements) each; the last takes 1000 - 576 = 424.
  EXPECT_EQ(shard_bounds(1000, 4), (Bounds{0, 192, 384, 576, 1000}));
}

TEST(ShardBounds, PropertiesOverManySizes) {
  for (std::int64_t world = 1; world <= 9; ++world) {
    for (std::int64_t n = 0; n <= 3000; n += 7) {
      const Bounds b = shard_bounds(n, world);
      SCOPED_TRACE("n " + std::to_string(n) + " world " + std::to_string(world));
      ASSERT_EQ(b.size(), static_cast<std::size_t>(world) + 1);
      ASSERT_EQ(b.front(), 0);
      ASSERT_EQ(b.back(), n);
      const std::int64_t part = b[1] - b[0];
      for (std::int64_t r = 0; r + 1 < world; ++r) {
        const std::int64_t size = b[static_cast<std::size_t>(r) + 1] - b[static_cast<std::size_t>(r)];
        ASSERT_EQ(size, part) << "rank " << r;  // every rank but the last gets the same count
        ASSERT_EQ(size % 64, 0) << "rank " << r;
      }
      // The last part is the rest: at least the others' count and under 64 x world more, i.e.
      // the common count is the largest multiple of 64 that fits world times.
      const std::int64_t last = n - b[static_cast<std::size_t>(world) - 1];
      if (world > 1) {
        ASSERT_GE(last, part);
        ASSERT_LT(last - part, 64 * world);
      }
      ASSERT_LE(part * world, n);
      ASSERT_GT((part + 64) * world, n);
      EXPECT_EQ(error_of([&] { check_shard_bounds("test", b, world, n); }), "");
    }
  }
}

TEST(CheckShardBounds, AcceptsPartitionsNotMadeByShardBounds) {
  // Empty parts anywhere and parts of any length are a valid partition.
  EXPECT_EQ(error_of([] { check_shard_bounds("all_gather", Bounds{0, 10, 10, 20}, 3, 20); }), "");
  EXPECT_EQ(error_of([] { check_shard_bounds("all_gather", Bounds{0, 0, 0, 0}, 3, 0); }), "");
  EXPECT_EQ(error_of([] { check_shard_bounds("all_gather", Bounds{0, 1, 2}, 2, 2); }), "");
  EXPECT_EQ(error_of([] { check_shard_bounds("all_gather", Bounds{0, 5}, 1, 5); }), "");
}

TEST(CheckShardBounds, RefusesWrongCount) {
  EXPECT_EQ(error_of([] {
              check_shard_bounds("all_gather", Bounds{0, 100}, 3, 100);
            }),
            "all_gather: bounds {0, 100} (expected 4 non-decreasing offsets from 0 to 100 (one part per rank))");
  EXPECT_EQ(
      error_of([] {
        check_shard_bounds("reduce_scatter_sum", Bounds{0, 64, 128, 200, 200}, 3, 200);
      }),
      "reduce_scatter_sum: bounds {0, 64, 128, 200, 200} (expected 4 non-decreasing offsets from 0 to 200 (one part "
      "per rank))");
  // No bounds at all: refused without reading any.
  EXPECT_EQ(error_of([] { check_shard_bounds("all_gather", Bounds{}, 2, 5); }),
            "all_gather: bounds {} (expected 3 non-decreasing offsets from 0 to 5 (one part per rank))");
}

TEST(CheckShardBounds, RefusesAStartOtherThanZero) {
  EXPECT_EQ(
      error_of([] {
        check_shard_bounds("all_gather", Bounds{1, 64, 128, 200}, 3, 200);
      }),
      "all_gather: bounds {1, 64, 128, 200} (expected 4 non-decreasing offsets from 0 to 200 (one part per rank))");
}

TEST(CheckShardBounds, RefusesAnEndOtherThanNumel) {
  EXPECT_EQ(
      error_of([] {
        check_shard_bounds("all_gather", Bounds{0, 64, 128, 199}, 3, 200);
      }),
      "all_gather: bounds {0, 64, 128, 199} (expected 4 non-decreasing offsets from 0 to 200 (one part per rank))");
  EXPECT_EQ(
      error_of([] {
        check_shard_bounds("all_gather", Bounds{0, 64, 128, 201}, 3, 200);
      }),
      "all_gather: bounds {0, 64, 128, 201} (expected 4 non-decreasing offsets from 0 to 200 (one part per rank))");
}

TEST(CheckShardBounds, RefusesDecreasingOffsets) {
  EXPECT_EQ(
      error_of([] {
        check_shard_bounds("all_gather", Bounds{0, 128, 64, 200}, 3, 200);
      }),
      "all_gather: bounds {0, 128, 64, 200} (expected 4 non-decreasing offsets from 0 to 200 (one part per rank))");
  // An offset past the end, back down to numel at the last: the ends alone are not enough.
  EXPECT_EQ(error_of([] {
              check_shard_bounds("reduce_scatter_sum", Bounds{0, 300, 200}, 2, 200);
            }),
            "reduce_scatter_sum: bounds {0, 300, 200} (expected 3 non-decreasing offsets from 0 to 200 (one part "
            "per rank))");
}

}  // namespace
}  // namespace minitron
