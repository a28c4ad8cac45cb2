// AdamW sharded over data-parallel ranks (ZeRO stage 1, train/optimizer.h) against the one-process
// AdamW on the same gradient, for any engine and communicator. Each rank holds the same weights
// and the gradient (r + 1) g; the ranks' sum, (1 + ... + R) g, is what the one-process optimizer
// is given. For R <= 3 that sum is the one-process gradient to the bit when the ranks are added
// in rank order, as TcpGroup and the emulated NCCL add them: 2 ranks sum g + fl(2g) = fl(3g),
// 3 ranks fl(3g) + fl(3g) = 2 fl(3g) = fl(6g) (doubling is exact and commutes with rounding).
// (Real NCCL's ring order, e.g. fl(5g) + g, need not be; these tests run on the emulator.) The update is elementwise,
// so a rank that updates its part of the flat parameter vector must produce the one-process values to the bit; only the
// global gradient norm is summed in another grouping (per part, then over ranks).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "dist/communicator.h"
#include "model/llama.h"
#include "tests/train/distill_test_util.h"
#include "train/optimizer.h"

namespace minitron::testing {

struct OptimizerRun {
  std::vector<float> params, weights, m, v;  // weights, m, v: gathered (rank 0 only)
  std::vector<double> grad_norms;
  std::vector<std::int64_t> bounds;
};

inline constexpr int kShardedSteps = 3;

// The gradient of step s: a fixed pattern of both signs and many magnitudes (rounded to fp32
// first), times `factor`.
inline std::vector<float> sharded_test_gradient(std::size_t n, int step, float factor) {
  std::vector<float> g(n);
  for (std::size_t i = 0; i < n; ++i) {
    const float pattern =
        std::sin(0.37f * static_cast<float>(i) + static_cast<float>(step)) * (1.0f + static_cast<float>(i % 7));
    g[i] = factor * pattern;
  }
  return g;
}

// kShardedSteps AdamW steps of the pair's student on `communicator`'s rank, whose gradient is
// the pattern times `factor` (AdamW::step sums it over ranks); grad_clip 0 leaves the norm out
// of the update.
inline OptimizerRun run_sharded_optimizer(const DistillPair& pair, Communicator& communicator, Backend& backend,
                                          float factor, double grad_clip) {
  LlamaModel model(pair.student_config, backend, 1, 4, ModelMode::Training);
  model.set_parameters(pair.student_params);
  OptimizerConfig config;
  config.learning_rate = 1e-2;
  config.warmup_steps = 1;
  config.total_steps = kShardedSteps;
  config.grad_clip = grad_clip;
  AdamW optimizer(model, config, communicator);
  OptimizerRun result;
  result.bounds.assign(optimizer.shard_bounds().begin(), optimizer.shard_bounds().end());
  const std::size_t n = pair.student_params.size();
  for (int s = 0; s < kShardedSteps; ++s) {
    const std::vector<float> g = sharded_test_gradient(n, s, factor);
    backend.upload(model.gradients(), g.data());
    result.grad_norms.push_back(optimizer.step(s).grad_norm);
  }
  result.params.resize(n);
  model.get_parameters(result.params);
  result.weights = optimizer.gather_weights();
  optimizer.gather_moments(result.m, result.v);
  return result;
}

// The one-process run that R ranks must reproduce.
inline OptimizerRun one_process_run(const DistillPair& pair, Backend& backend, std::int64_t world_size,
                                    double grad_clip) {
  SingleProcessCommunicator single;
  const float total = static_cast<float>(world_size * (world_size + 1) / 2);  // 1 + 2 + ... + R, exact
  return run_sharded_optimizer(pair, single, backend, total, grad_clip);
}

inline void expect_sharded_matches(const OptimizerRun& expected, const std::vector<OptimizerRun>& ranks) {
  const auto world_size = static_cast<std::int64_t>(ranks.size());
  const std::size_t n = expected.params.size();
  // The parts really split the vector, inside parameters: every rank owns some of it.
  const std::vector<std::int64_t>& bounds = ranks[0].bounds;
  ASSERT_EQ(bounds.size(), static_cast<std::size_t>(world_size) + 1);
  for (std::size_t r = 0; r < ranks.size(); ++r) EXPECT_LT(bounds[r], bounds[r + 1]) << "rank " << r << " owns nothing";
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const OptimizerRun& got = ranks[r];
    // The norm: a double sum of squares grouped per part and then over ranks, against one
    // grouping of the whole: they differ by at most ~n eps_double ~ 1e-12 relative (n ~ 1e4).
    for (std::size_t s = 0; s < expected.grad_norms.size(); ++s)
      EXPECT_NEAR(got.grad_norms[s], expected.grad_norms[s], 1e-10 * expected.grad_norms[s])
          << "rank " << r << " step " << s;
    // Every rank ends with every part's update: the replicas are identical.
    ASSERT_EQ(got.params.size(), n);
    EXPECT_EQ(0, std::memcmp(got.params.data(), ranks[0].params.data(), n * sizeof(float))) << "rank " << r;
    if (r > 0) {
      EXPECT_TRUE(got.weights.empty() && got.m.empty() && got.v.empty()) << "only rank 0 receives the state";
    }
  }
  const OptimizerRun& lead = ranks[0];
  EXPECT_EQ(lead.params, expected.params);
  EXPECT_EQ(lead.weights, expected.weights);
  EXPECT_EQ(lead.m, expected.m);
  EXPECT_EQ(lead.v, expected.v);
}

// gather_to_rank0 (train/optimizer.h) of n elements split by shard_bounds over the ranks, in
// windows of `window` elements (smaller than, across and larger than the parts): rank r's part
// holds 1000 (r + 1) + i at element i, all exact in fp32.
inline std::vector<float> gather_through_window(Backend& backend, Communicator& communicator, std::int64_t n,
                                                std::int64_t window) {
  const std::vector<std::int64_t> bounds = shard_bounds(n, communicator.world_size());
  const auto rank = static_cast<std::size_t>(communicator.rank());
  std::vector<float> mine;
  for (std::int64_t i = bounds[rank]; i < bounds[rank + 1]; ++i)
    mine.push_back(static_cast<float>(1000 * (communicator.rank() + 1) + i));
  BackendBuffer part(backend, static_cast<std::int64_t>(mine.size()), DType::F32);
  backend.upload(part, mine.data());
  return gather_to_rank0(backend, communicator, bounds, part, window);
}

// What rank 0 must receive: element i from the rank whose part holds it, by hand for n = 200
// ({0, 64, 200} on 2 ranks, {0, 64, 128, 200} on 3) and n = 100 (too short to split: every part
// but the last empty).
inline std::vector<float> expected_gather(std::int64_t n, std::int64_t world_size) {
  std::vector<float> whole;
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t owner = n == 100 ? world_size - 1 : i < 64 ? 0 : (world_size == 2 || i < 128) ? 1 : 2;
    whole.push_back(static_cast<float>(1000 * (owner + 1) + i));
  }
  return whole;
}

inline constexpr std::int64_t kGatherSizes[] = {200, 100};
inline constexpr std::int64_t kGatherWindows[] = {1, 7, 64, 100, 200, 1000};

// What gather_through_window returns on one rank for every size and window, in that order.
inline std::vector<std::vector<float>> gathers_of_every_size(Backend& backend, Communicator& communicator) {
  std::vector<std::vector<float>> got;
  for (std::int64_t n : kGatherSizes)
    for (std::int64_t window : kGatherWindows) got.push_back(gather_through_window(backend, communicator, n, window));
  return got;
}

// got[rank]: gathers_of_every_size on each rank.
inline void expect_gathers(const std::vector<std::vector<std::vector<float>>>& got) {
  const auto world_size = static_cast<std::int64_t>(got.size());
  std::size_t k = 0;
  for (std::int64_t n : kGatherSizes)
    for (std::int64_t window : kGatherWindows) {
      EXPECT_EQ(got[0][k], expected_gather(n, world_size)) << "n " << n << ", window " << window;
      for (std::size_t r = 1; r < got.size(); ++r) EXPECT_TRUE(got[r][k].empty()) << "rank " << r;
      ++k;
    }
}

}  // namespace minitron::testing
