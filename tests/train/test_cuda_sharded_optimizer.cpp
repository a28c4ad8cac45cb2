// AdamW sharded over ranks (tests/train/sharded_optimizer_test_util.h) on the emulated CUDA
// engine with the emulated NCCL: bf16 parameters all-gathered after each update, fp32 master
// weights and moments sharded and gathered through the optimizer's device window.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "tests/dist/nccl_test_util.h"
#include "tests/train/sharded_optimizer_test_util.h"

namespace minitron {
namespace {

void expect_sharded_matches_one_process(int world_size, double grad_clip) {
  const testing::DistillPair pair;
  cuda::CudaBackend backend(0);
  const testing::OptimizerRun expected = testing::one_process_run(pair, backend, world_size, grad_clip);
  std::vector<testing::OptimizerRun> ranks(static_cast<std::size_t>(world_size));
  const auto errors =
      testing::run_nccl_ranks(world_size, [&](int rank, cuda::CudaBackend& engine, cuda::NcclCommunicator& nccl) {
        ranks[static_cast<std::size_t>(rank)] =
            testing::run_sharded_optimizer(pair, nccl, engine, static_cast<float>(rank + 1), grad_clip);
      });
  ASSERT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world_size)));
  testing::expect_sharded_matches(expected, ranks);
  // The master weights are not the bf16 parameters: the gather returned the fp32 copy.
  EXPECT_NE(ranks[0].weights, ranks[0].params);
}

// Windows that cut the parts make general bounds (rooted broadcasts, empty parts) besides the
// equal parts of the whole vector.
TEST(CudaGatherToRankZero, AnyWindowAssemblesTheParts) {
  for (int world_size : {2, 3}) {
    std::vector<std::vector<std::vector<float>>> got(static_cast<std::size_t>(world_size));
    const auto errors =
        testing::run_nccl_ranks(world_size, [&](int rank, cuda::CudaBackend& engine, cuda::NcclCommunicator& nccl) {
          got[static_cast<std::size_t>(rank)] = testing::gathers_of_every_size(engine, nccl);
        });
    ASSERT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world_size)));
    testing::expect_gathers(got);
  }
}

TEST(CudaShardedAdamW, TwoRanksMatchOneProcessToTheBit) { expect_sharded_matches_one_process(2, 0.0); }
TEST(CudaShardedAdamW, ThreeRanksMatchOneProcessToTheBit) { expect_sharded_matches_one_process(3, 0.0); }

}  // namespace
}  // namespace minitron
