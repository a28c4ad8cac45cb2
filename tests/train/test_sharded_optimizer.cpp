// AdamW sharded over ranks (tests/train/sharded_optimizer_test_util.h) on the CPU engine: each
// rank a thread with its own engine, summing over TCP on 127.0.0.1 (dist/host_communicator.h).
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "dist/host_communicator.h"
#include "kernels/make_backend.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/train/sharded_optimizer_test_util.h"

namespace minitron {
namespace {

void expect_sharded_matches_one_process(std::int64_t world_size, double grad_clip) {
  const testing::DistillPair pair;
  auto backend = make_backend("cpu");
  const testing::OptimizerRun expected = testing::one_process_run(pair, *backend, world_size, grad_clip);
  std::vector<testing::OptimizerRun> ranks(static_cast<std::size_t>(world_size));
  const int port = testing::free_tcp_port();
  const auto errors = testing::run_ranks(world_size, [&](std::int64_t rank) {
    auto engine = make_backend("cpu");
    HostCommunicator communicator(*engine,
                                  std::make_unique<TcpGroup>(testing::local_environment(rank, world_size, port)));
    ranks[static_cast<std::size_t>(rank)] =
        testing::run_sharded_optimizer(pair, communicator, *engine, static_cast<float>(rank + 1), grad_clip);
  });
  ASSERT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world_size)));
  testing::expect_sharded_matches(expected, ranks);
  EXPECT_EQ(ranks[0].weights, ranks[0].params);  // the CPU engine's fp32 weights are its parameters
}

TEST(GatherToRankZero, AnyWindowAssemblesTheParts) {
  for (std::int64_t world_size : {2, 3}) {
    std::vector<std::vector<std::vector<float>>> got(static_cast<std::size_t>(world_size));
    const int port = testing::free_tcp_port();
    const auto errors = testing::run_ranks(world_size, [&](std::int64_t rank) {
      auto engine = make_backend("cpu");
      HostCommunicator communicator(*engine,
                                    std::make_unique<TcpGroup>(testing::local_environment(rank, world_size, port)));
      got[static_cast<std::size_t>(rank)] = testing::gathers_of_every_size(*engine, communicator);
    });
    ASSERT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world_size)));
    testing::expect_gathers(got);
  }
}

TEST(ShardedAdamW, TwoRanksMatchOneProcessToTheBit) { expect_sharded_matches_one_process(2, 0.0); }
TEST(ShardedAdamW, ThreeRanksMatchOneProcessToTheBit) { expect_sharded_matches_one_process(3, 0.0); }
// With clipping (grad_clip far below the norm) the scale comes from the norm summed per part,
// which may differ from the one-process norm in its last double bits; the float scale
// clip / (norm + 1e-6) then rounds to the same value unless the norm sits on a rounding
// boundary of float, which these gradients do not.
TEST(ShardedAdamW, ClippedUpdateMatchesOneProcess) { expect_sharded_matches_one_process(2, 1e-3); }

}  // namespace
}  // namespace minitron
