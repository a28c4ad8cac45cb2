// How LossWorkspace sizes its chunks by default: the backend's logit budget, in whole 128-row
// GEMM tiles, never more rows than a call can have.
#include <gtest/gtest.h>

#include "kernels/make_backend.h"
#include "train/losses.h"

namespace minitron {
namespace {

TEST(LossWorkspace, DefaultChunkIsWholeTilesOfTheBackendsLogitBudget) {
  auto backend = make_backend("cpu");
  // The CPU budget is 2^24 logits: 16777216 / 30000 = 559 rows, cut to 4 whole tiles.
  EXPECT_EQ(LossWorkspace(*backend, 30000, 100000).rows_per_chunk(), 512);
  // 16777216 / 200000 = 83 rows: under one tile, kept as it is.
  EXPECT_EQ(LossWorkspace(*backend, 200000, 100000).rows_per_chunk(), 83);
  // Never more than the rows a call can have.
  EXPECT_EQ(LossWorkspace(*backend, 30000, 300).rows_per_chunk(), 300);
  // An explicit size is taken as given.
  EXPECT_EQ(LossWorkspace(*backend, 30000, 100000, 130).rows_per_chunk(), 130);
}

}  // namespace
}  // namespace minitron
