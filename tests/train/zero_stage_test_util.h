// ZeRO stage 2 (model/gradient_buckets.h) against stage 1, for any engine and communicator: the
// same run trained with each stage must give the same weights, losses and gradient norms. With
// one micro-batch per step the two stages sum every gradient element with the same collective in
// the same (rank) order, so they agree to the bit; a bucket reduced before its gradient is whole,
// twice, or never changes the sum, and so the weights after the first step.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "data/shards.h"
#include "dist/communicator.h"
#include "dist/host_communicator.h"
#include "kernels/make_backend.h"
#include "model/llama.h"
#include "tests/dist/tcp_test_util.h"
#include "tests/prune/prune_test_util.h"
#include "tests/train/data_parallel_test_util.h"
#include "train/losses.h"
#include "train/trainer.h"

namespace minitron::testing {

struct StageRun {
  std::vector<float> params;
  std::vector<double> losses, grad_norms;  // rank 0's metrics.jsonl (empty on other ranks)
  std::int64_t buckets = 0;
};

// One rank's cross-entropy run of `config` from `init` with the model's gradients kept as
// `stage` (buckets of at least bucket_elements elements), the parameters gathered after each step
// beside the next forward (overlap_parameter_gather) or in the step.
inline StageRun train_with_stage(const ModelConfig& config, const std::vector<float>& init, Backend& backend,
                                 Communicator& communicator, TrainOptions o, int stage, std::int64_t bucket_elements,
                                 bool overlap_parameter_gather = true) {
  GradientSharding sharding;
  sharding.stage = stage;
  sharding.communicator = &communicator;
  sharding.bucket_elements = bucket_elements;
  sharding.overlap_parameter_gather = overlap_parameter_gather;
  LlamaModel model(config, backend, o.batch_size, o.sequence_length, ModelMode::Training, o.recompute, sharding);
  model.set_parameters(init);
  LossWorkspace workspace(backend, config.vocab_size, o.batch_size * o.sequence_length);
  CrossEntropyObjective objective(workspace);
  o.zero_stage = stage;
  run_training(model, objective, o, communicator);
  StageRun run;
  run.params.resize(init.size());
  model.get_parameters(run.params);
  run.buckets = static_cast<std::int64_t>(model.gradient_buckets().buckets().size());
  if (communicator.rank() == 0) {
    run.losses = logged_losses(o.output / "metrics.jsonl");
    run.grad_norms = logged_losses(o.output / "metrics.jsonl", "grad_norm");
  }
  return run;
}

// The same floats to the bit (memcmp: even the sign of a zero counts).
inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// train_with_stage on `world` CPU ranks over TCP (threads on 127.0.0.1); returns rank 0's, after
// checking that every rank ended with its weights.
inline StageRun tcp_run(const ModelConfig& config, const std::vector<float>& init, const TrainOptions& o, int world,
                        int stage, std::int64_t bucket_elements, bool overlap_parameter_gather = true) {
  std::vector<StageRun> ranks(static_cast<std::size_t>(world));
  const int port = free_tcp_port();
  const auto errors = run_ranks(world, [&](std::int64_t rank) {
    auto backend = make_backend("cpu");
    HostCommunicator communicator(*backend, std::make_unique<TcpGroup>(local_environment(rank, world, port)));
    ranks[static_cast<std::size_t>(rank)] =
        train_with_stage(config, init, *backend, communicator, o, stage, bucket_elements, overlap_parameter_gather);
  });
  EXPECT_EQ(errors, std::vector<std::string>(static_cast<std::size_t>(world)));
  for (int r = 1; r < world; ++r)
    EXPECT_TRUE(same_bits(ranks[0].params, ranks[static_cast<std::size_t>(r)].params)) << "rank " << r;
  return ranks[0];
}

// The TCP runs' model (tiny, seeded) and shard, in a temporary directory.
struct TcpTrainingSetup {
  TempDir dir;
  ModelConfig config = tiny_config();
  std::vector<float> init = tiny_parameters(config, 3);
  TcpTrainingSetup() { write_shard(dir / "train.bin", tiny_tokens(400, config.vocab_size, 4)); }
  // Data-parallel options of batch 2, writing to the directory's `name`.
  TrainOptions options(const std::string& name) const {
    TrainOptions o = data_parallel_options(dir / "train.bin");
    o.batch_size = 2;
    o.output = dir / name;
    return o;
  }
};

// Stage 2's run equals stage 1's to the bit: weights (memcmp, so that even the sign of a zero
// counts), every logged loss and gradient norm.
inline void expect_same_bits(const StageRun& stage1, const StageRun& stage2, const std::string& what) {
  ASSERT_EQ(stage1.params.size(), stage2.params.size()) << what;
  EXPECT_TRUE(same_bits(stage1.params, stage2.params)) << what;
  EXPECT_EQ(stage1.losses, stage2.losses) << what;
  EXPECT_EQ(stage1.grad_norms, stage2.grad_norms) << what;
}

}  // namespace minitron::testing
