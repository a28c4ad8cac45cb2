// AdamW sharded over data-parallel ranks (ZeRO stage 1, train/optimizer.h) against the one-process
// AdamW on the same gradient. Each rank (a thread with its own CPU engine, summing over TCP on
// 127.0.0.1) holds the same weights and the gradient g * (r + 1); the ranks' sum, (1 + ... + R) g,
// is what the one-process optimizer is given. The update is elementwise, so a rank that updates
// its part of the flat parameter vector must produce the one-process values to the bit; only the
// global gradient norm is summed in another grouping (per part, then over ranks).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "kernels/host_communicator.h"
#include "model/backend.h"
#include "model/llama.h"
#include "tests/distill/distill_test_util.h"
#include "tests/util/tcp_test_util.h"
#include "train/optimizer.h"

namespace minitron {
namespace {

struct OptimizerRun {
  std::vector<float> params, weights, m, v;  // weights, m, v: gathered (rank 0 only)
  std::vector<double> grad_norms;
  std::vector<std::int64_t> bounds;
};

constexpr int kSteps = 3;

// The gradient of step s: a fixed pattern of both signs and many magnitudes (rounded to fp32
// first), times `factor`.
std::vector<float> gradient(std::size_t n, int step, float factor) {
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float pattern = std::sin(0.37f * static_cast<float>(i) + static_cast<float>(step)) * (1.0f + static_cast<float>(i % 7));
    g[i] = factor * pattern;
  }
  return g;
}

OptimizerConfig config(double grad_clip) {
  OptimizerConfig c;
  c.learning_rate = 1e-2;
  c.warmup_steps = 1;
  c.total_steps = kSteps;
  c.grad_clip = grad_clip;
  return c;
}

// kSteps AdamW steps on `communicator`'s rank, whose gradient is gradient(...) * factor.
OptimizerRun run(const testing::DistillPair& pair, Communicator& communicator, Backend& backend, float factor,
                 double grad_clip) {
  LlamaModel model(pair.student_config, backend, 1, 4, ModelMode::Training);
  model.set_parameters(pair.student_params);
  AdamW optimizer(model, config(grad_clip), communicator);
  OptimizerRun result;
  result.bounds.assign(optimizer.shard_bounds().begin(), optimizer.shard_bounds().end());
  const std::size_t n = pair.student_params.size();
  for (int s = 0; s < kSteps; ++s) {
    const std::vector<float> g = gradient(n, s, factor);
    backend.upload(model.gradients(), g.data());
    communicator.reduce_scatter_sum(model.gradients(), optimizer.shard_bounds());
    result.grad_norms.push_back(optimizer.step(s).grad_norm);
  }
  result.params.resize(n);
  model.get_parameters(result.params);
  result.weights = optimizer.gather_weights();
  optimizer.gather_moments(result.m, result.v);
  return result;
}

void expect_sharded_matches_single(std::int64_t world_size, double grad_clip) {
  const testing::DistillPair pair;
  const std::size_t n = pair.student_params.size();
  auto single_backend = make_backend("cpu");
  SingleProcessCommunicator single;
  const float total = static_cast<float>(world_size * (world_size + 1) / 2);  // 1 + 2 + ... + R, exact
  const OptimizerRun expected = run(pair, single, *single_backend, total, grad_clip);

  std::vector<OptimizerRun> ranks(static_cast<std::size_t>(world_size));
  const int port = testing::free_tcp_port();
  const auto errors = testing::run_ranks(world_size, [&](std::int64_t rank) {
    auto backend = make_backend("cpu");
    HostCommunicator communicator(*backend, std::make_unique<TcpGroup>(testing::local_environment(rank, world_size, port)));
    ranks[static_cast<std::size_t>(rank)] = run(pair, communicator, *backend, static_cast<float>(rank + 1), grad_clip);
  });
  ASSERT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world_size)));

  // The parts really split the vector, and inside parameters: every rank but the last owns one.
  const std::vector<std::int64_t>& bounds = ranks[0].bounds;
  ASSERT_EQ(bounds.size(), static_cast<std::size_t>(world_size) + 1);
  for (std::int64_t r = 0; r < world_size; ++r) EXPECT_LT(bounds[static_cast<std::size_t>(r)], bounds[static_cast<std::size_t>(r) + 1]);

  for (std::int64_t r = 0; r < world_size; ++r) {
    const OptimizerRun& got = ranks[static_cast<std::size_t>(r)];
    // The norm: a double sum of squares grouped per part and then over ranks, against one
    // grouping of the whole: they differ by at most ~n eps_double ~ 1e-12 relative (n ~ 1e4).
    for (int s = 0; s < kSteps; ++s)
      EXPECT_NEAR(got.grad_norms[static_cast<std::size_t>(s)], expected.grad_norms[static_cast<std::size_t>(s)],
                  1e-10 * expected.grad_norms[static_cast<std::size_t>(s)])
          << "rank " << r << " step " << s;
    // Every rank ends with every part's update: the replicas are identical.
    EXPECT_EQ(0, std::memcmp(got.params.data(), ranks[0].params.data(), n * sizeof(float))) << "rank " << r;
    if (r > 0) {
      EXPECT_TRUE(got.weights.empty() && got.m.empty() && got.v.empty()) << "only rank 0 receives the gathered state";
    }
  }
  const OptimizerRun& lead = ranks[0];
  ASSERT_EQ(lead.weights.size(), n);
  ASSERT_EQ(lead.m.size(), n);
  ASSERT_EQ(lead.v.size(), n);
  EXPECT_EQ(lead.weights, lead.params);  // the CPU engine's weights are its parameters
  EXPECT_EQ(lead.m, expected.m);
  EXPECT_EQ(lead.v, expected.v);
  EXPECT_EQ(lead.params, expected.params);
}

// Without clipping the norm does not enter the update, and the summed gradient is the one-process
// gradient to the bit: with g the pattern, 2 ranks sum g + fl(2g) = fl(3g), and 3 ranks
// fl(3g) + fl(3g) = 2 fl(3g) = fl(6g) (doubling is exact and commutes with rounding).
TEST(ShardedAdamW, TwoRanksMatchOneProcessToTheBit) { expect_sharded_matches_single(2, 0.0); }
TEST(ShardedAdamW, ThreeRanksMatchOneProcessToTheBit) { expect_sharded_matches_single(3, 0.0); }
// With clipping (grad_clip far below the norm) the scale comes from the norm summed per part,
// which may differ from the one-process norm in its last double bits; the float scale
// clip / (norm + 1e-6) then rounds to the same value unless the norm sits on a rounding
// boundary of float, which these gradients do not.
TEST(ShardedAdamW, ClippedUpdateMatchesOneProcess) { expect_sharded_matches_single(2, 1e-3); }

}  // namespace
}  // namespace minitron
