// AdamW sharded over ranks (tests/distill/sharded_optimizer_test_util.h) on the emulated CUDA
// engine with the emulated NCCL: bf16 parameters all-gathered after each update, fp32 master
// weights and moments sharded and gathered through the optimizer's device window.
#include <gtest/gtest.h>

#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_communicator.h"
#include "tests/distill/sharded_optimizer_test_util.h"

namespace minitron {
namespace {

void expect_sharded_matches_one_process(int world_size, double grad_clip) {
  const testing::DistillPair pair;
  cuda::CudaBackend backend(0);
  const testing::OptimizerRun expected = testing::one_process_run(pair, backend, world_size, grad_clip);
  ncclUniqueId id;
  MINITRON_NCCL_CHECK(ncclGetUniqueId(&id));
  std::vector<testing::OptimizerRun> ranks(static_cast<std::size_t>(world_size));
  std::vector<std::string> errors(static_cast<std::size_t>(world_size));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world_size; ++rank)
    threads.emplace_back([&, rank] {
      try {
        cuda::CudaBackend engine(0);
        cuda::NcclCommunicator communicator(engine, rank, world_size, id);
        ranks[static_cast<std::size_t>(rank)] =
            testing::run_sharded_optimizer(pair, communicator, engine, static_cast<float>(rank + 1), grad_clip);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(rank)] = e.what();
      }
    });
  for (std::thread& t : threads) t.join();
  ASSERT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world_size)));
  testing::expect_sharded_matches(expected, ranks);
  // The master weights are not the bf16 parameters: the gather returned the fp32 copy.
  EXPECT_NE(ranks[0].weights, ranks[0].params);
}

// Windows that cut the parts make general bounds (rooted broadcasts, empty parts) besides the
// equal parts of the whole vector.
TEST(CudaGatherToRankZero, AnyWindowAssemblesTheParts) {
  for (int world_size : {2, 3}) {
    ncclUniqueId id;
    MINITRON_NCCL_CHECK(ncclGetUniqueId(&id));
    std::vector<std::vector<std::vector<float>>> got(static_cast<std::size_t>(world_size));
    std::vector<std::string> errors(static_cast<std::size_t>(world_size));
    std::vector<std::thread> threads;
    for (int rank = 0; rank < world_size; ++rank)
      threads.emplace_back([&, rank] {
        try {
          cuda::CudaBackend engine(0);
          cuda::NcclCommunicator communicator(engine, rank, world_size, id);
          for (std::int64_t window : testing::kGatherWindows)
            got[static_cast<std::size_t>(rank)].push_back(testing::gather_through_window(engine, communicator, 200, window));
        } catch (const std::exception& e) {
          errors[static_cast<std::size_t>(rank)] = e.what();
        }
      });
    for (std::thread& t : threads) t.join();
    ASSERT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world_size)));
    for (std::size_t w = 0; w < std::size(testing::kGatherWindows); ++w) {
      EXPECT_EQ(got[0][w], testing::expected_gather_of_200(world_size)) << "window " << testing::kGatherWindows[w];
      for (std::size_t r = 1; r < got.size(); ++r) EXPECT_TRUE(got[r][w].empty()) << "rank " << r;
    }
  }
}

TEST(CudaShardedAdamW, TwoRanksMatchOneProcessToTheBit) { expect_sharded_matches_one_process(2, 0.0); }
TEST(CudaShardedAdamW, ThreeRanksMatchOneProcessToTheBit) { expect_sharded_matches_one_process(3, 0.0); }

}  // namespace
}  // namespace minitron
